"""PyTorch profiler traces kept in the MLflow run they profile."""

import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.profilers import PyTorchProfiler


class ProfilerTracesToMLflow(Callback):
    """Uploads the traces a :class:`~lightning.pytorch.profilers.PyTorchProfiler` wrote during ``fit`` to MLflow.

    The profiler (``trainer.profiler``, see ``callbacks/profiling.yaml``) exports a Chrome/Perfetto trace
    into its ``dirpath`` each time its schedule's active window closes; at the end of fit every file
    written there since fit began is logged to each MLflow logger's run under ``artifact_path``. Open a
    trace in https://ui.perfetto.dev or ``chrome://tracing``. (Lightning writes the profiler's text
    summary after the last callback hook, so that one stays on disk only.)

    Args:
        artifact_path: the run's artifact folder for the traces.
    """

    def __init__(self, artifact_path: str = "profile") -> None:
        self.artifact_path = artifact_path
        self._started = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.time()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        profiler = trainer.profiler
        if not trainer.is_global_zero or not isinstance(profiler, PyTorchProfiler) or profiler.dirpath is None:
            return
        traces = [path for path in Path(profiler.dirpath).rglob("*")
                  if path.is_file() and path.stat().st_mtime >= self._started - 1]
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                for trace in traces:
                    logger.experiment.log_artifact(logger.run_id, str(trace), self.artifact_path)
