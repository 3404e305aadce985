"""Where runs are tracked: the MLflow store a run resolves to, and the kit's console log lines."""

import io
import logging
import sys
from pathlib import Path

import pytest

from constellation_kit.cli import _show_kit_info_logs
from constellation_kit.tracking import resolve_tracking_uri


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
