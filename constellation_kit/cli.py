"""The ``constellation-kit`` console script: LightningCLI's fit/validate/test/predict plus the kit's own commands.

Every subcommand lives in one parser, so ``constellation-kit --help`` lists them all. Lightning's
subcommands keep every jsonargparse habit: several ``--config`` files compose left to right,
dotted overrides (``--model.init_args.optimizer.init_args.lr 3e-4``), ``--print_config``.
The kit's own commands (``plan``, ``compare``, ...) register a :class:`Command` in
:data:`COMMANDS`; a command that reads a recipe gets the same ``--config`` handling.
"""

import atexit
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import torch
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from constellation_kit.data.batching import micro_batch_size
from constellation_kit.checkpointing import AtomicCheckpointIO, find_last_checkpoint
from constellation_kit.errors import ConfigError
from constellation_kit.lazy_default import lazy_default
from constellation_kit.recipes import recipe_bases, with_recipe_bases
from constellation_kit.tracking import MLflowRunLogger, SaveConfigToRun, check_run_resumable
from constellation_kit.train.rng_state import RNGStateCheckpoint
from constellation_kit.train.tokenizer_checkpoint import TokenizerInCheckpoint
from constellation_kit.train.module import LanguageModel


@dataclass(frozen=True)
class Command:
    """A first-class subcommand beside Lightning's.

    ``add_arguments(parser)`` declares its options; ``run(config, cli)`` does the work with the
    parsed options. With ``reads_recipe`` the parser also takes the model/data/trainer sections
    and ``--config`` recipes, exactly as ``fit`` does, so ``plan --config recipes/xl.yaml`` works.
    """

    name: str
    help: str
    add_arguments: Callable[[ArgumentParser], None]
    run: Callable[[Namespace, "ConstellationCLI"], None]
    reads_recipe: bool = False


COMMANDS: dict[str, Command] = {}
"""The kit's own subcommands, by name."""


def register_command(command: Command) -> Command:
    """Add a subcommand to ``constellation-kit`` (its name must not clash with another)."""
    if command.name in COMMANDS or command.name in LightningCLI.subcommands():
        raise ValueError(f"a subcommand named {command.name!r} already exists")
    COMMANDS[command.name] = command
    return command


class ConstellationCLI(LightningCLI):
    """LightningCLI with the kit's defaults: MLflow tracking, atomic checkpoints, recipe-named runs."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=LanguageModel,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigToRun,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "logger": lazy_default(MLflowRunLogger),
                # Our samplers shard by rank themselves and resume mid-epoch; Lightning's
                # automatic DistributedSampler would replace them and lose both.
                "use_distributed_sampler": False,
                "default_root_dir": "runs",
            },
            auto_configure_optimizers=False,
            parser_kwargs={"description": "Train and study sparse multimodal foundation models from YAML recipes."},
            args=args,
            run=run,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # A recipe's `config: base.yaml` is applied as an earlier --config (constellation_kit.recipes says why).
        if isinstance(args, (dict, Namespace)):
            return super().parse_arguments(parser, args)
        argv = sys.argv[1:] if args is None else list(args)
        expanded = with_recipe_bases(argv)
        if expanded == argv:
            return super().parse_arguments(parser, args)
        self.config = parser.parse_args(expanded)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        _integers_before_floats(parser)
        # The tokenizer decides the vocabulary; the model is sized from it, never by hand.
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        parser.add_argument(
            "--resume_data_mismatch",
            type=Literal["error", "ok"],
            default="error",
            help="When --ckpt_path resumes a run whose data settings (seed, seq_len, global batch, source, manifest) "
            "differ from the checkpoint's: 'error' stops with a message naming them; 'ok' continues on the new "
            "data, keeping the checkpoint's sample count as the data position.",
        )

    def after_instantiate_classes(self) -> None:
        if self.subcommand in COMMANDS:
            return
        # Fail on a bad recipe now, with the recipe's words, not minutes into trainer setup.
        if isinstance(self.model, LanguageModel):
            self.model.check_config()
        config = self.config[self.subcommand]
        if hasattr(self.datamodule, "allow_data_mismatch"):
            self.datamodule.allow_data_mismatch = config.get("resume_data_mismatch") == "ok"
        global_batch = getattr(self.datamodule, "global_batch_size", None)
        if global_batch is not None:
            micro_batch_size(global_batch, self.trainer.accumulate_grad_batches, self.trainer.world_size)
        self._check_media_tokens()

    def _check_media_tokens(self) -> None:
        """The data's placeholders per item must equal what each encoder emits per item.

        Checked here, where both the data module and the model exist, rather than linked with
        ``parser.link_arguments``: a link would hide one of the two numbers from the recipe, and the
        encoders are optional (``null`` in the text-only ablation). Without the check the mismatch
        surfaces only at the first media batch, minutes in. Encoders are built on the meta device.
        """
        placeholders = getattr(self.datamodule, "num_placeholders", None)
        factories = getattr(self.model, "encoder_factories", None)
        if not isinstance(placeholders, dict) or not isinstance(factories, dict):
            return
        names = {"image": ("image_tokens", "vision_encoder"), "audio": ("audio_tokens", "audio_encoder")}
        for modality, factory in factories.items():
            if factory is None or modality not in placeholders or modality not in names:
                continue
            with torch.device("meta"):
                produced = getattr(factory(), "num_tokens", None)
            if produced is not None and produced != placeholders[modality]:
                data_key, encoder_key = names[modality]
                raise ConfigError(
                    f"data {data_key}={placeholders[modality]} but the {encoder_key}'s num_tokens={produced}: "
                    f"each {modality} fills {data_key} placeholder tokens with the encoder's outputs, so set "
                    f"data.init_args.{data_key} and model.init_args.{encoder_key}.init_args.num_tokens to the same value"
                )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Atomic checkpoint writes unless the recipe chose its own CheckpointIO. Added here rather
        # than as a default value because a plugin instance does not print back as YAML.
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        # Every run saves and restores its RNG state (exact resume with dropout), named in a recipe or not.
        # Every checkpoint carries its tokenizer, so eval, generate and export need nothing else.
        named = [*callbacks, *(config.get("callbacks") or [])]
        for always in (RNGStateCheckpoint, TokenizerInCheckpoint):
            if not any(isinstance(c, always) for c in named):
                callbacks = [*callbacks, always()]
        return super()._instantiate_trainer(config, callbacks)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # Never unpickle arbitrary code from a checkpoint unless asked: the kit's checkpoints hold
        # only tensors and plain values, so torch's restricted loader reads them.
        if "weights_only" in self._subcommand_method_arguments.get(subcommand, {}):
            parser.set_defaults(weights_only=True)
        return parser

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand in COMMANDS:
            # The kit's commands load their checkpoint themselves (load_trained_model); Lightning would
            # merge its hyperparameters into a parser that has no model section, and fail.
            return
        if not subcommand or self.config[subcommand].get("weights_only") is not False:
            return super()._parse_ckpt_path()
        # `--weights_only false`: Lightning (2.6) reads the checkpoint's hyperparameters with
        # torch.load(weights_only=True) whatever the flag says, and so refuses the very checkpoint
        # the flag was given for. Read them as the user chose.
        load = torch.load
        torch.load = lambda *args, **kwargs: load(*args, **{**kwargs, "weights_only": False})
        try:
            super()._parse_ckpt_path()
        finally:
            torch.load = load

    # -- the kit's own subcommands -------------------------------------------------------------

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        for command in COMMANDS.values():
            subparser = self.init_parser(description=command.help)
            if command.reads_recipe:
                self._add_arguments(subparser)
            command.add_arguments(subparser)
            self._subcommand_parsers[command.name] = subparser
            parser._subcommands_action.add_subcommand(command.name, subparser, help=command.help)

    def _set_seed(self) -> None:
        command = COMMANDS.get(self.subcommand)
        if command is None or command.reads_recipe:  # only recipe parsers have seed_everything
            super()._set_seed()

    def instantiate_classes(self) -> None:
        if self.subcommand not in COMMANDS:
            super().instantiate_classes()

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand in COMMANDS:
            COMMANDS[subcommand].run(self.config[subcommand], self)
        else:
            super()._run_subcommand(subcommand)

    # -- run naming and resuming ---------------------------------------------------------------

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None or self.subcommand in COMMANDS:
            return
        config = self.config[self.subcommand]
        logger = config.trainer.logger
        # Runs are named by the recipes the user stacked, not by the bases those recipes build on.
        given = [getattr(p, "absolute", str(p)) for p in (config.get("config") or [])]
        bases = {b for p in given for b in recipe_bases(Path(p))}
        recipes = [Path(p) for p in given if Path(p).resolve() not in bases]
        if isinstance(logger, Namespace) and _is_class(logger, MLflowRunLogger):
            init = logger.init_args
            if init.run_name is None:
                init.run_name = "+".join(p.stem for p in recipes) or "run"
            if config.ckpt_path == "last":
                group = Path(init.run_root) / init.experiment_name / init.run_name
                last = find_last_checkpoint(group)
                config.ckpt_path = str(last)
                if self.subcommand == "fit":
                    # Continue the same MLflow run and run directory rather than starting a new one.
                    init.run_id = last.parent.parent.name
                    # A run deleted in MLflow, or a run directory moved away from its store, would
                    # otherwise end in an MLflow traceback minutes later.
                    check_run_resumable(init.tracking_uri, init.run_id, last)
                logging.getLogger(__name__).info("Resuming from %s", last)
        ckpt = config.ckpt_path
        if ckpt is not None and ckpt not in ("last", "best", "hpc", "registry") and not Path(ckpt).exists():
            # A sharded checkpoint is a directory, a single-process one a file: either will do.
            raise ConfigError(f"--ckpt_path {ckpt}: no such checkpoint file. Check the path, or use --ckpt_path last")


def _integers_before_floats(parser: ArgumentParser) -> None:
    """Let ``--trainer.limit_val_batches 1`` mean one batch again, as Lightning documents.

    Lightning annotates ``limit_*_batches`` and ``overfit_batches`` as ``Union[float, int]``: an int
    counts batches, a float is a fraction. jsonargparse (4.53 at least) takes the first member of a
    union that accepts the value, so ``1`` became ``1.0``, which Lightning reads as *all* batches. With
    ``int`` tried first, ``1`` stays one batch and ``1.0`` (which ``int`` refuses) stays 100%.
    """
    for action in parser._actions:
        hint = getattr(action, "_typehint", None)
        members = get_args(hint) if get_origin(hint) is Union else ()
        if action.dest.startswith("trainer.") and float in members and int in members:
            action._typehint = Union[tuple([int, *(m for m in members if m is not int)])]


def _is_class(namespace: Namespace, cls: type) -> bool:
    class_path = namespace.get("class_path", "")
    return class_path in (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__)


def _quiet_known_warnings() -> None:
    # Pre-packed arrays need no worker processes; Lightning's advice to add some is noise here.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # TextDataModule restores the data position itself (its state_dict), not through the loader.
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, not the stream it first saw.

    A redirected or captured stderr (a notebook cell, pytest's capsys) is replaced and closed
    between uses; a handler holding the old one prints "--- Logging error ---" tracebacks.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys.stderr


def _show_kit_info_logs() -> None:
    # The kit's INFO lines (which attention backend `auto` chose, resuming from where) reach the
    # console like Lightning's own; without a handler Python would print only warnings.
    kit = logging.getLogger("constellation_kit")
    if not kit.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        kit.addHandler(handler)
        kit.setLevel(logging.INFO)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``constellation-kit`` console script."""
    import constellation_kit.commands  # noqa: F401  (registers the kit's own subcommands)

    _quiet_known_warnings()
    _show_kit_info_logs()
    try:
        ConstellationCLI(args=args)
    except Exception as error:
        config_error = _config_error_in(error)
        if config_error is None:
            raise
        print(f"constellation-kit: error: {config_error}", file=sys.stderr)
        raise SystemExit(2) from None


def console_main() -> None:
    """The ``constellation-kit`` console script: :func:`main`, then an exit that skips module teardown.

    After ``main`` the work is done and every file closed (checkpoints are renamed into place, MLflow's
    queue drained and the run ended); what remains of an ordinary exit is the interpreter tearing down
    the thousands of modules torch, Lightning, MLflow and timm loaded: 2.6 s after a tiny fit on 2
    cores, 1.7 s after ``--help``. So the exit handlers run (logging and MLflow flush there), the
    standard streams are flushed and the process ends with ``os._exit``. An exception, or a thread
    the interpreter would wait for, takes the ordinary exit instead.
    """
    try:
        main()
        code = 0
    except SystemExit as exit_:  # --help, --print_config and the one-line config errors end here
        if exit_.code is not None and not isinstance(exit_.code, int):
            raise
        code = exit_.code or 0
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _config_error_in(error: BaseException) -> ConfigError | None:
    """The :class:`ConfigError` ``error`` is or wraps, if any.

    jsonargparse re-raises an exception from a constructor it instantiates (``dispatch:``, a
    dataclass) as a ValueError of its own, "Does not validate against any of the Union subtypes",
    chained through ``__cause__``/``__context__``: the user's one-line message is inside it.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    # `python -m constellation_kit.cli` runs this file as __main__, a second copy of the module:
    # call the canonical one, whose COMMANDS registry the subcommands fill.
    from constellation_kit.cli import console_main

    console_main()
