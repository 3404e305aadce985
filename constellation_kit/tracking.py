"""Experiment tracking: MLflow by default, one directory per run, the config saved with it."""

import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

from constellation_kit.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""MLflow 3's own local default: a SQLite file in the working directory, no server."""


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The store a run logs to: the recipe's or command line's, else ``$MLFLOW_TRACKING_URI``, else the local default.

    A relative SQLite path is made absolute against the working directory of now. MLflow keeps one
    store per URI string for the life of the process, so a relative ``sqlite:///mlflow.db`` would go
    on meaning the file first opened, whatever the working directory is later (a notebook or a test
    that runs several experiments in one process would log them all into the first directory's store).
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def check_run_resumable(tracking_uri: str | None, run_id: str, checkpoint: Path) -> None:
    """Raise a :class:`ConfigError` saying what to do if MLflow run ``run_id`` cannot be continued.

    ``--ckpt_path last`` continues the checkpoint's MLflow run. That fails deep inside MLflow when the
    run was deleted, or when its store is not the one configured (the run directory was moved to
    another working directory without its ``mlflow.db``, or the store is elsewhere).
    """
    uri = resolve_tracking_uri(tracking_uri)
    new_run = (f"or continue it as a new MLflow run from the same checkpoint: --ckpt_path {checkpoint} "
               "(a path, not 'last'), with another --trainer.logger.init_args.run_name if you like")
    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ConfigError(
            f"--ckpt_path last found {checkpoint}, but its MLflow run {run_id} is not in the tracking store {uri} "
            "(was the run directory moved from another working directory, without its mlflow.db?). Point "
            f"--trainer.logger.init_args.tracking_uri at the store that holds the run, {new_run}"
        ) from None
    if run.info.lifecycle_stage == "deleted":
        raise ConfigError(
            f"--ckpt_path last found {checkpoint}, but its MLflow run {run_id} was deleted from {uri}. Restore it "
            f"(MLFLOW_TRACKING_URI={uri} mlflow runs restore --run-id {run_id}), {new_run}"
        )


class MLflowRunLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with the kit's defaults and a run directory on local disk.

    Metrics, params and artifacts go to MLflow (``sqlite:///mlflow.db`` unless the recipe, the
    command line or ``$MLFLOW_TRACKING_URI`` names another store). Checkpoints and the resolved
    config go to ``<run_root>/<experiment_name>/<run_name>/<run_id>/``, which is what Lightning's
    ``ModelCheckpoint`` derives from ``save_dir``, ``name`` and ``version`` below.

    Args:
        experiment_name: MLflow experiment; runs to be compared belong in one.
        run_name: MLflow run name; the CLI defaults it to the recipe names joined by ``+``.
        tracking_uri: MLflow tracking store.
        tags: extra MLflow run tags.
        run_root: local directory holding every run's checkpoints and config.
        run_id: continue this MLflow run (the CLI sets it when resuming with ``--ckpt_path last``).
        log_model: also upload checkpoints to MLflow as artifacts.
    """

    def __init__(
        self,
        experiment_name: str = "constellation",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        run_root: str = "runs",
        run_id: str | None = None,
        log_model: bool = False,
    ) -> None:
        tracking_uri = resolve_tracking_uri(tracking_uri)
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=tracking_uri,
            tags=tags,
            run_id=run_id,
            log_model=log_model,
        )
        self.run_root = run_root

    @property
    def save_dir(self) -> str:
        return str(Path(self.run_root) / self._experiment_name)

    @property
    def name(self) -> str:
        return self._run_name or "run"

    @property
    def run_dir(self) -> Path:
        """``<run_root>/<experiment>/<run_name>/<run_id>``: this run's checkpoints and config."""
        return Path(self.save_dir) / self.name / str(self.version)


class SaveConfigToRun(SaveConfigCallback):
    """Saves the resolved config into the run's directory and to every MLflow logger.

    Lightning's own SaveConfigCallback writes to ``trainer.log_dir``, which MLFlowLogger leaves
    ``None`` for any non-file tracking store and the callback then asserts on (Lightning issues
    #19441, #16310). This subclass writes to the run directory instead, and logs the config
    as an artifact, as flattened params, and the recipe file names as tags.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        run_dir = self._run_dir(trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / self.config_filename
        self.parser.save(self.config, str(config_path), skip_none=False, overwrite=True, multifile=False)
        recipes = ",".join(str(p) for p in (self.config.get("config") or []))
        for logger in trainer.loggers:
            if not isinstance(logger, MLFlowLogger):
                continue
            client, run_id = logger.experiment, logger.run_id
            client.log_artifact(run_id, str(config_path))
            client.set_tag(run_id, "recipes", recipes or "(none)")
            client.set_tag(run_id, "command", " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:5000])
            try:
                resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                resolved.pop("config", None)
                logger.log_hyperparams(flatten_config(resolved))
            except Exception as error:  # MLflow refuses to change a param of an existing run
                log.warning("Config params not re-logged to MLflow run %s (resumed with changes?): %s", run_id, error)

    @staticmethod
    def _run_dir(trainer: Trainer) -> Path:
        for logger in trainer.loggers:
            if isinstance(logger, MLflowRunLogger):
                return logger.run_dir
        return Path(trainer.log_dir or trainer.default_root_dir)


def flatten_config(config: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists to dotted keys with string values.

    ``{"model": {"init_args": {"d_model": 128}}, "tags": ["a"]}`` ->
    ``{"model.init_args.d_model": "128", "tags.0": "a"}``.
    """
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list) and config:
        items = enumerate(config)
    else:
        return {prefix: str(config)}
    flat: dict[str, str] = {}
    for key, value in items:
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
