"""Read a ``constellation-kit fit`` checkpoint for export: its architecture, tokenizer and weights, tensor by tensor.

A single-file checkpoint is read whole (:func:`~constellation_kit.trained_model.read_checkpoint`):
fine at the sizes one process trains. A sharded FSDP2 checkpoint (a directory: the
``torch.distributed.checkpoint`` shards plus ``meta.pt``) is never gathered: each tensor is read
on its own from the shards through the checkpoint's metadata, so exporting a model larger than the
machine's memory needs one tensor of it at a time.

The network itself is rebuilt from the run's ``config.yaml`` on the meta device (no memory): it
says what the tensors are, the checkpoint says what they hold.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import yaml
from lightning.fabric.utilities.load import _METADATA_FILENAME
from tokenizers import Tokenizer

from constellation_kit.errors import ConfigError
from constellation_kit.interop.tensors import TensorSource
from constellation_kit.model.transformer import Transformer
from constellation_kit.trained_model import TOKENIZER_KEY, _find_config, _instantiate, _tokenizer, read_checkpoint

NETWORK_PREFIX = "network."
"""Where the LanguageModel keeps its Transformer in the checkpoint's ``state_dict``."""


@dataclass
class CheckpointForExport:
    """A run's text network on the meta device, the source of its weights, its tokenizer and its config."""

    network: Transformer
    source: TensorSource
    tokenizer: Tokenizer
    config: dict[str, Any]
    has_encoders: bool


def open_checkpoint(ckpt_path: str | Path, config_path: str | Path | None = None) -> CheckpointForExport:
    """Open ``ckpt_path`` (single file or sharded directory) for a tensor-by-tensor export."""
    path = Path(ckpt_path)
    if not path.exists():
        raise ConfigError(f"no checkpoint at {path}: pass --ckpt_path the file (or sharded directory) that fit wrote")
    config_file = Path(config_path) if config_path is not None else _find_config(path)
    config = yaml.safe_load(config_file.read_text())
    if path.is_dir():
        if not (path / _METADATA_FILENAME).is_file():
            raise ConfigError(f"{path} is a directory but not a sharded checkpoint (no {_METADATA_FILENAME} in it)")
        meta = torch.load(path / _METADATA_FILENAME, map_location="cpu", weights_only=True)
        source = _sharded_source(path)
    else:
        meta = read_checkpoint(path)
        state = meta.pop("state_dict")

        def source(name: str) -> torch.Tensor:
            return state[NETWORK_PREFIX + name]

    vocab_size = (meta.get("hyper_parameters") or {}).get("vocab_size")
    if vocab_size is None:
        raise ConfigError(f"{path} has no hyper_parameters.vocab_size: it was not written by constellation-kit fit")
    module, datamodule = _instantiate(config, vocab_size, config_file)
    with torch.device("meta"):
        network = module.network_factory(vocab_size)
    tokenizer = Tokenizer.from_str(meta[TOKENIZER_KEY]) if meta.get(TOKENIZER_KEY) else _tokenizer(meta, datamodule)
    init_args = config["model"].get("init_args") or {}
    has_encoders = bool(init_args.get("vision_encoder") or init_args.get("audio_encoder"))
    return CheckpointForExport(network, source, tokenizer, config, has_encoders)


def _sharded_source(path: Path) -> TensorSource:
    reader = dcp.FileSystemReader(path)
    metadata = reader.read_metadata().state_dict_metadata

    def source(name: str) -> torch.Tensor:
        key = f"state_dict.{NETWORK_PREFIX}{name}"
        entry = metadata.get(key)
        if entry is None or not hasattr(entry, "size"):
            raise ConfigError(f"the sharded checkpoint {path} has no tensor {key!r}")
        tensor = torch.empty(entry.size, dtype=entry.properties.dtype)
        # One tensor per load: DCP reads only the byte ranges of this tensor's shards.
        dcp.load({"state_dict": {NETWORK_PREFIX + name: tensor}}, storage_reader=dcp.FileSystemReader(path), no_dist=True)
        return tensor

    return source
