"""Runs read back from a real MLflow store, their final and best values, and the table they make."""

import csv
import io
import random
from pathlib import Path

import pytest
from mlflow import MlflowClient

from constellation_kit.compare import comparison_table, load_runs
from constellation_kit.compare.runs import COMPARISON_TAG
from constellation_kit.errors import ConfigError


def log_runs(client: MlflowClient, experiment: str, count: int, seed: int = 0) -> dict[str, dict]:
    """``count`` finished runs with random loss/accuracy histories; returns what was logged, by run id."""
    rng = random.Random(seed)
    experiment_id = client.create_experiment(experiment)
    logged = {}
    for index in range(count):
        run_id = client.create_run(experiment_id, run_name=f"variant-{index}").info.run_id
        params = {"model.init_args.optimizer.init_args.lr": str(10 ** -(index + 2)), "seed": "1"}
        for key, value in params.items():
            client.log_param(run_id, key, value)
        history = {"val/loss": [(step, rng.uniform(1, 5)) for step in rng.sample(range(100), 8)],
                   "val/acc": [(step, rng.uniform(0, 1)) for step in rng.sample(range(100), 8)]}
        for metric, points in history.items():
            for step, value in points:
                client.log_metric(run_id, metric, value, step=step)
        client.set_terminated(run_id)
        logged[run_id] = history
    return logged


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    """One store for the module (creating an MLflow database takes seconds); each test has its own experiments."""
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


@pytest.fixture
def e(request: pytest.FixtureRequest) -> str:
    """An experiment name no other test uses."""
    return request.node.name


def test_final_is_the_last_step_and_best_depends_on_the_metric(client: MlflowClient, e: str) -> None:
    logged = log_runs(client, e, 3)
    runs = load_runs(client, e, ["val/loss", "val/acc"])
    assert [run.run_id for run in runs] == list(logged)  # oldest first
    for run in runs:
        loss, acc = logged[run.run_id]["val/loss"], logged[run.run_id]["val/acc"]
        assert run.final("val/loss") == pytest.approx(max(loss)[1])  # the value at the highest step
        assert run.best("val/loss") == pytest.approx(min(value for _, value in loss))
        assert run.best("val/acc") == pytest.approx(max(value for _, value in acc))
        assert run.status == "FINISHED" and run.wall_seconds is not None
    assert runs[0].final("never/logged") is None


def test_chosen_runs_come_in_the_order_given_and_unknown_ids_are_named(client: MlflowClient, e: str) -> None:
    ids = list(log_runs(client, e, 3))
    assert [run.run_id for run in load_runs(client, e, ["val/loss"], [ids[2], ids[0]])] == [ids[2], ids[0]]
    with pytest.raises(ConfigError, match=f"runs nope are not active runs of experiment '{e}'"):
        load_runs(client, e, ["val/loss"], [ids[0], "nope"])


def test_an_unknown_experiment_lists_the_ones_there_are(client: MlflowClient, e: str) -> None:
    log_runs(client, e, 1)
    with pytest.raises(ConfigError, match=f"no MLflow experiment named 'absent'.*{e}"):
        load_runs(client, "absent", ["val/loss"])


def test_deleted_runs_and_comparison_runs_are_left_out(client: MlflowClient, e: str) -> None:
    ids = list(log_runs(client, e, 3))
    client.delete_run(ids[1])
    experiment_id = client.get_experiment_by_name(e).experiment_id
    client.create_run(experiment_id, run_name="compare", tags={COMPARISON_TAG: "true"})
    assert [run.run_id for run in load_runs(client, e, ["val/loss"])] == [ids[0], ids[2]]


def test_the_table_shows_the_differing_key_and_each_metric(client: MlflowClient, e: str) -> None:
    logged = log_runs(client, e, 2)
    runs = load_runs(client, e, ["val/loss"])
    table = comparison_table(runs, ["val/loss"])
    assert table.headers == ["run", "status", "model.optimizer.lr", "val/loss final", "val/loss best",
                             "tokens/s", "wall time"]
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[0] == table.headers
    assert [row[2] for row in rows[1:]] == ["0.01", "0.001"]
    first = logged[runs[0].run_id]["val/loss"]
    assert float(rows[1][4]) == pytest.approx(min(value for _, value in first), rel=1e-3)
    markdown = table.to_markdown().splitlines()
    assert markdown[0].startswith("| run | status | model.optimizer.lr |") and len(markdown) == 4
