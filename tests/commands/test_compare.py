"""``constellation-kit compare`` on a local store, on a real MLflow server on loopback, and on a real tiny run."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from constellation_kit.cli import main
from constellation_kit.compare.runs import COMPARISON_TAG
from conftest import free_port, tracking_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compare"))
from test_runs_and_table import log_runs  # noqa: E402


def compare(capsys: pytest.CaptureFixture, *args: str) -> str:
    main(["compare", *args])
    return capsys.readouterr().out


def test_table_picture_markdown_and_mlflow_artifact(capsys, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    log_runs(client, "sweep", 3)
    out = compare(capsys, "--experiment", "sweep", "--tracking_uri", uri, "--metrics", "val/loss,val/acc",
                  "--plot", str(tmp_path / "curves.png"), "--output", str(tmp_path / "table.md"))
    assert "model.optimizer.lr" in out and "variant-2" in out and "0.0001" in out
    assert "seed" not in out  # the same in every run
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "table.md").read_text().startswith("| run | status | model.optimizer.lr |")
    saved = client.search_runs([client.get_experiment_by_name("sweep").experiment_id],
                               filter_string=f"tags.`{COMPARISON_TAG}` = 'true'")
    assert len(saved) == 1
    assert {a.path for a in client.list_artifacts(saved[0].info.run_id)} == {"curves.png", "comparison.md"}
    # The comparison run holds the picture, and is not itself compared the next time.
    assert "compare " not in compare(capsys, "--experiment", "sweep", "--tracking_uri", uri)


def test_bad_requests_are_one_line_each(capsys, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_runs(MlflowClient(uri), "sweep", 1)
    for args, message in [
        (["--experiment", "nope"], "no MLflow experiment named 'nope'"),
        (["--experiment", "sweep", "--output", "table.txt"], "markdown (.md) or CSV (.csv)"),
        (["--experiment", "sweep", "--metrics", "x/y", "--plot", str(tmp_path / "p.png")], "nothing to plot"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["compare", "--tracking_uri", uri, *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real ``mlflow server`` on 127.0.0.1 with proxied artifacts, stopped after the test."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        start_new_session=True)  # its own process group: the server's workers stop with it
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def test_compare_against_a_real_mlflow_server(capsys, mlflow_server: str, tmp_path: Path) -> None:
    client = MlflowClient(mlflow_server)
    logged = log_runs(client, "remote", 2)
    compare(capsys, "--experiment", "remote", "--tracking_uri", mlflow_server, "--metrics", "val/loss",
            "--runs", *reversed(list(logged)), "--plot", str(tmp_path / "curves.png"),
            "--output", str(tmp_path / "table.csv"))
    rows = (tmp_path / "table.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["variant-1", "variant-0"]  # the order given
    saved = client.search_runs([client.get_experiment_by_name("remote").experiment_id],
                               filter_string=f"tags.`{COMPARISON_TAG}` = 'true'")
    assert [a.path for a in client.list_artifacts(saved[0].info.run_id, "")] == ["comparison.md", "curves.png"]


def test_compare_reads_what_a_real_fit_logged(capsys, tiny_run) -> None:
    cli, metrics = tiny_run
    uri = f"sqlite:///{cli.run_directory / 'mlflow.db'}"
    out = compare(capsys, "--experiment", "tiny", "--tracking_uri", uri, "--output",
                  str(cli.run_directory / "table.csv"))
    header, row = [line.split(",") for line in (cli.run_directory / "table.csv").read_text().splitlines()]
    row = dict(zip(header, row))
    assert row["run"] == cli.trainer.logger._run_name and row["status"] == "FINISHED"
    assert float(row["val/loss final"]) == pytest.approx(metrics["val/loss"], rel=1e-3)
    assert "tiny" in out
