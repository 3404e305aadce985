"""``constellation-kit eval``: a table against chance, JSON, and MLflow (a new run or the checkpoint's own)."""

import json
from pathlib import Path

import pytest

from constellation_kit.cli import main
from conftest import enter_run_directory, last_checkpoint, tracking_client


@pytest.mark.slow
def test_eval_prints_scores_against_chance_and_logs_them(tiny_run, tmp_path: Path, capsys, monkeypatch) -> None:
    cli, _ = tiny_run
    enter_run_directory(monkeypatch, cli.run_directory)  # where the run's mlflow.db is
    checkpoint, output = last_checkpoint(cli), tmp_path / "scores.json"
    main(["eval", f"--ckpt_path={checkpoint}", "--tasks=copying,arithmetic,image_caption", "--limit=4",
          f"--output={output}", "--mlflow=checkpoint"])
    table = capsys.readouterr().out
    assert "copying" in table and "image_caption" in table and "0.250" in table and "0.053" in table
    report = json.loads(output.read_text())
    assert report["global_step"] == 2 and list(report["results"]) == ["copying", "arithmetic", "image_caption"]
    assert report["results"]["arithmetic"]["metrics"].keys() == {"exact_match"}
    run = tracking_client().get_run(cli.trainer.logger.run_id)  # the checkpoint's own run
    assert run.data.metrics["eval/copying/acc"] == report["results"]["copying"]["metrics"]["acc"]
    assert run.data.metrics["eval/image_caption/chance"] == pytest.approx(0.25)

    main(["eval", f"--ckpt_path={checkpoint}", "--tasks=copying", "--limit=4", "--mlflow=new"])
    runs = tracking_client().search_runs([run.info.experiment_id], "tags.`constellation.eval_of_run` = "
                                         f"'{cli.trainer.logger.run_id}'")
    assert len(runs) == 1 and runs[0].data.metrics["eval/copying/acc"] == report["results"]["copying"]["metrics"]["acc"]


def test_an_unknown_task_is_named(tiny_run, capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", f"--ckpt_path={last_checkpoint(tiny_run[0])}", "--tasks=copying,no_such_task", "--mlflow=none"])
    assert exit_info.value.code == 2
    assert "no task named ['no_such_task']" in capsys.readouterr().err
