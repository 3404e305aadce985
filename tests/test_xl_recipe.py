"""The flagship recipe: xl.yaml shrunk by xl-smoke.yaml (built on it) trains under FSDP2 on 2 CPU processes."""

import math
import subprocess
import sys

import mlflow
import pytest

from conftest import REPO
from test_cli import assert_loss_is_reported_loss_plus_balance, loss_terms
from test_fault_tolerance import environment

SMOKE = REPO / "recipes" / "xl-smoke.yaml"


def test_xl_recipe_at_toy_size_trains_on_two_processes_and_writes_a_sharded_checkpoint(in_tmp_dir) -> None:
    command = [sys.executable, "-m", "constellation_kit.cli", "fit", f"--config={SMOKE}",
               "--trainer.max_steps=2", "--trainer.val_check_interval=32",
               "--trainer.callbacks.init_args.every_n_train_steps=2",  # the ModelCheckpoint: still last here
               '--trainer.callbacks+={"class_path": "test_cli.RecordLossTerms"}']
    result = subprocess.run(command, cwd=in_tmp_dir, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # backend: auto, with no CUDA, is SDPA (and says so)
    assert "attention backend auto -> sdpa on cpu" in result.stderr + result.stdout

    (checkpoint,) = (in_tmp_dir / "runs" / "xl-smoke" / "xl-smoke").glob("*/checkpoints/last.ckpt")
    assert checkpoint.is_dir() and (checkpoint / ".metadata").is_file()  # sharded: one file per rank
    assert len(list(checkpoint.glob("*.distcp"))) == 2

    client = mlflow.MlflowClient(f"sqlite:///{in_tmp_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("xl-smoke").experiment_id])
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert sorted(losses) == [0, 1] and all(math.isfinite(v) for v in losses.values())
    # The paper's numbers survive the smoke recipe: 16 accumulation micro-batches, AdamW wd 0.01.
    params = run.data.params
    assert params["trainer.accumulate_grad_batches"] == "16"
    assert params["model.init_args.optimizer.init_args.weight_decay"] == "0.01"
    assert "val/image_caption_acc" in run.data.metrics and "val/audio_caption_acc" in run.data.metrics
    # The router terms reach the loss under FSDP2 (each block returns its router output; see test_fsdp2.py).
    assert {"moe/router_l2", "moe/switch_balance", "moe/router_z_loss"} <= set(run.data.metrics)

    # And they reach it with their coefficients: on each rank, every micro-batch's optimised loss is
    # the loss it logs plus Σ coefficient x moe/<name>, all this rank's own values (2 steps x 16).
    ranks = [loss_terms(in_tmp_dir, rank) for rank in (0, 1)]
    for records in ranks:
        # (global_step counts the optimizer steps taken: the 16th micro-batch's, just before the callback)
        assert [(r["step"], r["batch"]) for r in records] == [((b + 1) // 16, b) for b in range(32)]
        assert_loss_is_reported_loss_plus_balance(records, moe=True)
    # What each rank reported is what train/loss logged: their mean (the logged value is all-reduced),
    # logged on the micro-batch the logger writes, each accumulation's last.
    written = [(first, second) for first, second in zip(*ranks) if (first["batch"] + 1) % 16 == 0]
    assert len(written) == 2
    for first, second in written:
        assert (first["reported"] + second["reported"]) / 2 == pytest.approx(first["logged_loss"], rel=1e-6)
