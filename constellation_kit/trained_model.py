"""A trained model back from its checkpoint: the module, its tokenizer and the run it came from.

``eval``, ``generate`` and ``export`` all start from ``--ckpt_path``. A checkpoint written by
``constellation-kit fit`` is either one file or, under FSDP2, a directory of shards with a ``meta.pt``;
both sit in ``runs/<experiment>/<run name>/<run id>/checkpoints/`` beside the run's resolved
``config.yaml``, which says how to build the module. The tokenizer is stored in the checkpoint itself
(``checkpoint["tokenizer"]``, written by :meth:`LanguageModel.on_save_checkpoint`); a checkpoint from
before that gets it from the data module, which loads it from the cache or retrains it (deterministic).

A sharded checkpoint is gathered into this one process: fine for evaluation and generation at the sizes
that fit one machine. Export of models too big for one process reads the shards itself
(:mod:`torch.distributed.checkpoint`), not through this function.
"""

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.load import _METADATA_FILENAME, _load_distributed_checkpoint
from lightning.pytorch import LightningDataModule, LightningModule
from tokenizers import Tokenizer

from constellation_kit.errors import ConfigError

TOKENIZER_KEY = "tokenizer"
"""Top-level checkpoint key holding the tokenizer as its JSON string (``Tokenizer.to_str()``)."""

CONFIG_NAME = "config.yaml"


@dataclass
class TrainedModel:
    """A trained :class:`~constellation_kit.train.LanguageModel` (or subclass) in eval mode, with what it needs.

    ``module`` holds the weights on ``device``; ``tokenizer`` turns text into the ids it was trained on;
    ``datamodule`` is the run's data module, constructed but not set up (its image and audio
    preprocessing settings are what ``generate --image`` and multimodal tasks need); ``config`` is
    the run's resolved config as a plain dict; ``run_dir`` is the directory holding ``config.yaml``,
    whose name is the MLflow run id when the run was tracked; ``global_step`` is the training step.
    """

    module: LightningModule
    tokenizer: Tokenizer
    datamodule: LightningDataModule
    config: dict[str, Any]
    run_dir: Path
    checkpoint_path: Path
    global_step: int

    @property
    def mlflow_run_id(self) -> str | None:
        """The MLflow run the checkpoint belongs to (the run directory's name), or ``None`` if untracked."""
        logger = (self.config.get("trainer") or {}).get("logger")
        return self.run_dir.name if isinstance(logger, dict) and "MLflow" in logger.get("class_path", "") else None

    @property
    def tracking_uri(self) -> str | None:
        """The tracking URI the run was logged to, as its config named it (``None``: MLflow's default)."""
        logger = (self.config.get("trainer") or {}).get("logger")
        if isinstance(logger, dict):
            return (logger.get("init_args") or {}).get("tracking_uri")
        return None


def load_trained_model(
    ckpt_path: str | Path,
    config_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> TrainedModel:
    """Build the run's module from its config, load ``ckpt_path``'s weights into it, and return it in eval mode.

    ``config_path`` defaults to the ``config.yaml`` found in the checkpoint's directory or above it.
    Raises :class:`ConfigError` naming the path for a missing checkpoint, a missing config, or weights
    that do not fit the config.
    """
    path = Path(ckpt_path)
    if not path.exists():
        raise ConfigError(f"no checkpoint at {path}: pass --ckpt_path the file (or sharded directory) that fit wrote "
                          "under runs/<experiment>/<run name>/<run id>/checkpoints/")
    config_file = Path(config_path) if config_path is not None else _find_config(path)
    config = yaml.safe_load(config_file.read_text())
    checkpoint = read_checkpoint(path)
    vocab_size = (checkpoint.get("hyper_parameters") or {}).get("vocab_size")
    if vocab_size is None:
        raise ConfigError(f"{path} has no hyper_parameters.vocab_size: it was not written by constellation-kit fit")
    module, datamodule = _instantiate(config, vocab_size, config_file)
    module.configure_model()
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise ConfigError(f"the weights in {path} do not fit the model {config_file} describes: "
                          f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    module.to(device=device, dtype=dtype).eval()
    return TrainedModel(module=module, tokenizer=_tokenizer(checkpoint, datamodule), datamodule=datamodule,
                        config=config, run_dir=config_file.parent, checkpoint_path=path,
                        global_step=int(checkpoint.get("global_step", 0)))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The whole checkpoint dict of a single-file or sharded (``meta.pt`` + shards) checkpoint, on the CPU."""
    path = path.resolve()
    if path.is_dir():
        if not (path / _METADATA_FILENAME).is_file():
            raise ConfigError(f"{path} is a directory but not a sharded checkpoint (no {_METADATA_FILENAME} in it)")
        return _load_distributed_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (every unreadable file gets the same advice)
        raise ConfigError(f"cannot read checkpoint {path} ({type(error).__name__}: {error}); "
                          "is it a complete file written by constellation-kit fit?") from error


def _find_config(checkpoint: Path) -> Path:
    for directory in [checkpoint.parent, *checkpoint.parent.parents][:3]:
        if (directory / CONFIG_NAME).is_file():
            return directory / CONFIG_NAME
    raise ConfigError(f"no {CONFIG_NAME} beside or above {checkpoint}: pass --config with the recipe the run used")


def _instantiate(config: dict[str, Any], vocab_size: int, source: Path) -> tuple[LightningModule, LightningDataModule]:
    sections = {"model": copy.deepcopy(config.get("model")), "data": copy.deepcopy(config.get("data"))}
    if not isinstance(sections["model"], dict) or not isinstance(sections["data"], dict):
        raise ConfigError(f"{source} has no model and data sections: is it a constellation-kit run's config.yaml?")
    sections["model"].setdefault("init_args", {})["vocab_size"] = vocab_size
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    try:
        parsed = parser.parse_object(sections)
    except Exception as error:  # noqa: BLE001 (jsonargparse's message names the key)
        raise ConfigError(f"{source} does not describe a model this version can build: {error}") from error
    built = parser.instantiate_classes(parsed)
    return built.model, built.data


def _tokenizer(checkpoint: dict[str, Any], datamodule: LightningDataModule) -> Tokenizer:
    stored = checkpoint.get(TOKENIZER_KEY)
    if stored is not None:
        return Tokenizer.from_str(stored)
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("the checkpoint holds no tokenizer and its data module has none to rebuild")
    return tokenizer
