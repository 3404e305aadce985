"""Where runs are tracked: the MLflow store a run resolves to, and the kit's console log lines."""

import io
import logging
import sys
from pathlib import Path

import mlflow
import pytest

from constellation_kit.cli import _show_kit_info_logs
from conftest import tracking_client
from constellation_kit.tracking import MLflowRunLogger, resolve_tracking_uri


def test_a_relative_sqlite_store_means_the_working_directory_of_now(in_tmp_dir: Path) -> None:
    # MLflow caches stores by URI string: a relative one would keep meaning the first directory's file.
    assert resolve_tracking_uri(None) == f"sqlite:///{in_tmp_dir.resolve() / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///sub/runs.db") == f"sqlite:///{in_tmp_dir.resolve() / 'sub' / 'runs.db'}"
    assert resolve_tracking_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_the_environment_store_is_used_when_none_is_named(in_tmp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"


def test_kit_log_lines_reach_the_current_stderr_after_it_was_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    _show_kit_info_logs()
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logging.getLogger("constellation_kit.test").info("one")
    first.close()  # as a captured or redirected stream is, once its cell or test is over
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("constellation_kit.test").info("two")
    assert second.getvalue() == "INFO: two\n"


def test_a_steps_metrics_are_gathered_into_one_write_and_none_is_left_behind(
    in_tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written_steps = []
    log_batch = mlflow.MlflowClient.log_batch

    def recording_log_batch(self, run_id, metrics=(), **kwargs):
        if metrics:
            written_steps.append(sorted(m.step for m in metrics))
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", recording_log_batch)
    logger = MLflowRunLogger(experiment_name="gathered", system_metrics_interval=None)
    logger.log_metrics({"lr": 0.1}, step=1)        # a callback's, early in the step
    logger.log_metrics({"train/loss": 2.0}, step=1)  # Lightning's, then its save()
    logger.save()
    logger.log_metrics({"val/loss": 3.0}, step=2)  # no save() follows: the run's end writes it
    logger.finalize("success")
    assert written_steps == [[1, 1], [2]]
    client = tracking_client()
    history = [[(m.step, m.value) for m in client.get_metric_history(logger.run_id, key)]
               for key in ("lr", "train/loss", "val/loss")]
    assert history == [[(1, 0.1)], [(1, 2.0)], [(2, 3.0)]]
