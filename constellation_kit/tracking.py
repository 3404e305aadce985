"""Experiment tracking: MLflow by default, one directory per run, the config saved with it."""

import logging
import os
import sys
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from argparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from constellation_kit.errors import ConfigError
from constellation_kit.run_record import record_run

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
        log_model: also upload checkpoints to MLflow as artifacts under ``checkpoints/``: ``True`` at the end
            of training (every checkpoint if the ModelCheckpoint keeps all), ``"all"`` as each is written.
            Sharded (FSDP2) checkpoint directories are uploaded whole. Checkpoints can be large: use it with
            an artifact store that has the room.
        system_metrics_interval: seconds between MLflow system-metrics samples (CPU, memory, disk, network,
            and GPU utilisation and memory where ``nvidia-ml-py`` is installed), logged as ``system/*``;
            ``None`` turns them off.
        async_metrics: write metrics through MLflow's asynchronous logging (a background thread that
            batches them), so that a training step never waits on the store: a synchronous write to the
            default SQLite store takes 15-45 ms, and a log step makes four (Lightning's, the MoE
            telemetry's, and the learning-rate and throughput monitors'), which cost the tiny recipe 2-4%
            of its steps on a CPU (``benchmarks/trainer_overhead.py``). A step's metrics are also
            gathered and written together at each ``save()`` Lightning makes after writing through its
            connector (its own step's metrics, the throughput monitor's), when a later step's arrive,
            or at the end: two writes a written step instead of four. Four writes of six metrics cost
            the background thread 31 ms of mostly Python, one of 24 metrics 15 ms (``RESULTS.md``,
            issue 15): time it takes the GIL from the training loop. Every metric is in the store
            before the run is marked finished (MLflow drains the queue then). Params, tags and
            artifacts stay synchronous, so a refused param still raises where it is logged. ``False``:
            each write blocks, at once.
    """

    def __init__(
        self,
        experiment_name: str = "constellation",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        run_root: str = "runs",
        run_id: str | None = None,
        log_model: bool | Literal["all"] = False,
        system_metrics_interval: float | None = 10.0,
        async_metrics: bool = True,
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
        self.system_metrics_interval = system_metrics_interval
        self.async_metrics = async_metrics
        self._resumed = run_id is not None
        self._system_metrics: SystemMetricsMonitor | None = None
        self._pending_metrics: dict[str, float] = {}
        self._pending_step: int | None = None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.async_metrics or step is None:
            self._write_metrics(metrics, step)
            return
        # Gathered by step: the learning-rate and throughput monitors, the MoE telemetry and Lightning each
        # log a written step's metrics; Lightning's connector follows each of its writes with save().
        if self._pending_metrics and step != self._pending_step:
            self._write_pending_metrics()
        self._pending_metrics.update(metrics)
        self._pending_step = step

    @rank_zero_only
    def save(self) -> None:
        super().save()
        self._write_pending_metrics()

    def _write_pending_metrics(self) -> None:
        if self._pending_metrics:
            metrics, self._pending_metrics = self._pending_metrics, {}
            self._write_metrics(metrics, self._pending_step)

    def _write_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        # Lightning passes one set of log_batch arguments for params and metrics alike; only metrics go async.
        batch_kwargs = self._log_batch_kwargs
        if self.async_metrics:
            self._log_batch_kwargs = {**batch_kwargs, "synchronous": False}
        try:
            super().log_metrics(metrics, step)
        finally:
            self._log_batch_kwargs = batch_kwargs
        self._start_system_metrics()  # the run exists once something was logged to it

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        super().log_hyperparams(params)
        self._start_system_metrics()

    def _start_system_metrics(self) -> None:
        if self.system_metrics_interval is None or self._system_metrics is not None or not self._initialized:
            return
        self._system_metrics = SystemMetricsMonitor(
            self.run_id, sampling_interval=self.system_metrics_interval, resume_logging=self._resumed,
            tracking_uri=self._tracking_uri)
        self._system_metrics.start()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self._write_pending_metrics()
        if self._system_metrics is not None:
            self._system_metrics.finish()
            self._system_metrics = None
        super().finalize(status)

    def _scan_and_log_checkpoints(self, checkpoint_callback: ModelCheckpoint) -> None:
        # Lightning's own skips directories (sharded checkpoints) and, before 2.6, passed MLflow a Path as
        # the artifact path, which MLflow 3 rejects (Lightning issue #20932); string paths, files and folders.
        paths = {checkpoint_callback.last_model_path, checkpoint_callback.best_model_path,
                 *checkpoint_callback.best_k_models}
        for name in sorted(p for p in paths if p):
            path = Path(name)
            if not path.exists():
                continue
            written = path.stat().st_mtime
            if self._logged_model_time.get(name, -1.0) >= written:
                continue
            if path.is_dir():
                self.experiment.log_artifacts(self._run_id, str(path.resolve()), f"checkpoints/{path.name}")
            else:
                self.experiment.log_artifact(self._run_id, str(path), "checkpoints")
            self._logged_model_time[name] = written

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
        # A resume keeps the run's original config.yaml (on disk and in MLflow) and adds its own beside it.
        original = run_dir / self.config_filename
        resume = resume_number(run_dir) if original.exists() else 0
        config_path = run_dir / f"resume-{resume}" / self.config_filename if resume else original
        config_path.parent.mkdir(parents=True, exist_ok=True)
        # Dumped once, for the file and the params: each dump validates the whole config (0.8 s for tiny).
        resolved_yaml = self.parser.dump(self.config, skip_none=False)
        config_path.write_text(resolved_yaml)
        recipe_files = [str(p) for p in (self.config.get("config") or [])]
        for logger in trainer.loggers:
            if not isinstance(logger, MLFlowLogger):
                continue
            client, run_id = logger.experiment, logger.run_id
            folder = f"resume-{resume}" if resume else None
            client.log_artifact(run_id, str(config_path), folder)
            for recipe in recipe_files:  # the stacked recipe files themselves, as the user wrote them
                if Path(recipe).is_file():
                    client.log_artifact(run_id, recipe, f"{folder}/recipes" if folder else "recipes")
            client.set_tag(run_id, "recipes", ",".join(recipe_files) or "(none)")
            client.set_tag(run_id, "command", " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:5000])
            if resume:
                client.set_tag(run_id, "resumes", str(resume))
            record_run(client, run_id, folder)
            try:
                resolved = yaml.safe_load(resolved_yaml)
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


def resume_number(run_dir: Path) -> int:
    """The number of the next resume of the run in ``run_dir``: 1 for the first, then 2, ..."""
    return 1 + sum(1 for child in run_dir.glob("resume-*") if child.name.removeprefix("resume-").isdigit())


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
