"""Runs that are killed, resumed, or resumed at another world size, driven through the real console script.

Each run is a separate process (a SIGKILL must not take pytest with it, and a 2-process launch
re-executes its command line), in a scratch working directory with its own MLflow store. The
resume-safety tests at the end run in-process: the resumes they check are refused before training.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from constellation_kit.cli import ConstellationCLI, main
from constellation_kit.data import MultimodalDataModule
from conftest import REPO, SMALL_DATA, TINY, enter_run_directory, free_port

FSDP2 = ["--trainer.strategy=constellation_kit.train.FSDP2Strategy", "--trainer.strategy.mixed_precision=false"]
# The world-size tests check an exact invariant (per-step losses to 1e-5 at any world size), which holds
# when every rank scores the same number of tokens: text rows. Multimodal rows leave placeholder
# positions unscored, so per-rank mean losses weigh tokens differently; see the multimodal test below.
TEXT_ONLY = [f"--config={REPO / 'recipes' / 'variants' / 'text-only.yaml'}"]
CHECKPOINT_EVERY_STEP = ["--trainer.callbacks.init_args.every_n_train_steps=1"]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "constellation_kit.cli", "fit", f"--config={TINY}", *SMALL_DATA,
            "--trainer.limit_val_batches=2", "--trainer.val_check_interval=4", "--trainer.log_every_n_steps=1",
            *args]


def environment() -> dict[str, str]:
    # A fresh launch: no rendezvous or rank variables left in this process by earlier in-process
    # runs (Lightning writes MASTER_PORT and friends into os.environ), or every 2-process run would
    # reuse one port. The checkout under test, and tests/ for the test-only callbacks recipes name.
    # MLFLOW_TRACKING_URI: exported by an earlier in-process run's logger (mlflow.set_tracking_uri).
    stale = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
             "MLFLOW_TRACKING_URI"}
    env = {k: v for k, v in os.environ.items() if k not in stale and not k.startswith("PL_")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


def run(cwd: Path, *args: str) -> None:
    result = subprocess.run(command(*args), cwd=cwd, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def losses(cwd: Path, run_name: str) -> dict[int, float]:
    """train/loss by step of the named run; a step logged twice (before a kill and after the resume) keeps its last value."""
    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (found,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{run_name}'")
    history = sorted(client.get_metric_history(found.info.run_id, "train/loss"), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


# Randomness a resume must reproduce: residual/embedding/attention dropout, random-resized image crops
# (tiny's image_augmentation) and random audio crops (the built-in clips last 0.5 s; 0.4 s makes the crop
# offset random).
RANDOM = ["--model.init_args.network.init_args.dropout=0.1", "--data.init_args.audio_seconds=0.4"]


def test_sigkill_mid_training_then_resume_reproduces_the_straight_run(in_tmp_dir: Path) -> None:
    # Validation after step 3: a run resumed from that checkpoint skips it, so it must not move the RNG either.
    steps = ["--trainer.max_steps=6", "--trainer.val_check_interval=3", *CHECKPOINT_EVERY_STEP, *RANDOM]
    run(in_tmp_dir, *steps, "--trainer.logger.init_args.run_name=straight")

    # Synchronous metrics: every step logged before the kill is in MLflow, none waits in the async queue.
    victim = subprocess.Popen(command(*steps, "--trainer.logger.init_args.run_name=killed",
                                      "--trainer.logger.init_args.async_metrics=false"), cwd=in_tmp_dir,
                              env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = in_tmp_dir / "runs" / "tiny" / "killed"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/checkpoints/step0000003.ckpt")):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not list(checkpoints.glob("*/checkpoints/step0000006.ckpt"))

    run(in_tmp_dir, *steps, "--trainer.logger.init_args.run_name=killed", "--ckpt_path=last")
    straight, resumed = losses(in_tmp_dir, "straight"), losses(in_tmp_dir, "killed")
    assert sorted(straight) == list(range(6))
    # Lightning writes a step's metrics just after that step's checkpoint: a kill between the two loses
    # step 2's loss (the checkpoint after step 2 is step0000003), and the resumed run starts at step 3.
    # Every other step is there.
    assert set(straight) - set(resumed) <= {2} and set(resumed) >= {0, 1, 3, 4, 5}, sorted(resumed)
    assert resumed == {step: straight[step] for step in resumed}  # bitwise on CPU: same data, RNG, optimizer, schedule


# The balance terms that are means over tokens (z-loss) or batch-free (router L2): their value on the
# global batch is the mean of the ranks' values. The Switch loss is a product of batch means, so
# each rank's differs from the whole batch's, and the objective itself would change with world size.
WORLD_SIZE_FREE_BALANCE = ('--model.init_args.balance=[{"class_path": "constellation_kit.model.RouterZLoss"}, '
                           '{"class_path": "constellation_kit.model.RouterL2Penalty"}]')


SHARDED_TEXT_RUN = ["--trainer.max_steps=4", *FSDP2, *TEXT_ONLY, *CHECKPOINT_EVERY_STEP, WORLD_SIZE_FREE_BALANCE]


@pytest.fixture(scope="module")
def straight_losses(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Per-step losses of the uninterrupted run, at one process: the reference for both directions."""
    workdir = tmp_path_factory.mktemp("straight")
    run(workdir, *SHARDED_TEXT_RUN, "--trainer.devices=1", "--trainer.logger.init_args.run_name=straight")
    return losses(workdir, "straight")


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_sharded_checkpoint_resumes_at_another_world_size(
    first: int, second: int, straight_losses: dict[int, float], in_tmp_dir: Path
) -> None:
    run(in_tmp_dir, *SHARDED_TEXT_RUN, f"--trainer.devices={first}", "--trainer.logger.init_args.run_name=moved",
        '--trainer.callbacks+={"class_path": "test_cli.StopAtStep", "init_args": {"step": 2}}')
    checkpoint = next((in_tmp_dir / "runs" / "tiny" / "moved").glob("*/checkpoints/last.ckpt"))
    assert checkpoint.is_dir() and (checkpoint / ".metadata").is_file()  # a sharded (DCP) checkpoint
    run(in_tmp_dir, *SHARDED_TEXT_RUN, f"--trainer.devices={second}", "--trainer.logger.init_args.run_name=moved",
        "--ckpt_path=last")
    expected, moved = straight_losses, losses(in_tmp_dir, "moved")
    assert sorted(moved) == [0, 1, 2, 3]
    # Same global batch, same samples: only the reduction order differs between world sizes.
    for step in expected:
        assert moved[step] == pytest.approx(expected[step], rel=1e-5)


# Imports first (their time varies by seconds between processes on a busy machine), then a file
# rendezvous, then the console script: the ranks reach the data preparation together, every time.
START_TOGETHER = """
import os, pathlib, sys, time
from constellation_kit.cli import main
ready = pathlib.Path(sys.argv[1]); ready.mkdir(exist_ok=True); (ready / os.environ["RANK"]).touch()
while len(list(ready.iterdir())) < int(os.environ["WORLD_SIZE"]):
    time.sleep(0.01)
main(sys.argv[2:])
"""


def launch_like_torchrun(cwd: Path, cache: Path, world_size: int, *args: str) -> list[str]:
    """Start ``world_size`` ranks at once, as torchrun does (each its own process from the start,
    rendezvous by environment), with ``cache`` as their cache; return each rank's stderr.

    Unlike Lightning's own launcher, which runs rank 0's command line to the trainer before it starts
    the others, every rank reaches the data at the same moment: the start-up race this exercises.
    """
    # The MLflow store is created here first: every rank instantiates the logger, and two processes
    # creating one SQLite store at once race in its schema migrations ("duplicate column name").
    mlflow.MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}").search_experiments()
    port = str(free_port())
    procs, logs = [], [cwd / f"rank{rank}.stderr" for rank in range(world_size)]
    for rank in range(world_size):
        env = {**environment(), "CONSTELLATION_KIT_CACHE": str(cache), "TORCHELASTIC_RUN_ID": "test",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(world_size), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world_size), "GROUP_RANK": "0"}
        with open(logs[rank], "w") as stderr:
            procs.append(subprocess.Popen([sys.executable, "-c", START_TOGETHER, str(cwd / "ready"), *command(*args)[3:]],
                                          cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr))
    deadline = time.monotonic() + 600
    while any(proc.poll() is None for proc in procs):
        if any(proc.poll() not in (None, 0) for proc in procs) or time.monotonic() > deadline:
            for proc in procs:  # one rank failed: the others would wait for it at a collective forever
                proc.kill()
        time.sleep(0.2)
    errors = [log.read_text() for log in logs]
    for rank, (proc, err) in enumerate(zip(procs, errors)):
        assert proc.returncode == 0, f"rank {rank}: {err[-3000:]}"
    return errors


def test_multimodal_fsdp2_trains_when_one_rank_lacks_a_modality(in_tmp_dir: Path) -> None:
    # Three text documents beside the media: most rows are captioned items, and on some steps one rank
    # holds images (or audio) and the other none. Every rank must still run every sharded encoder, or
    # the collectives desynchronise and the run dies.
    mostly_media = ["--trainer.max_steps=4", *FSDP2, WORLD_SIZE_FREE_BALANCE, "--data.init_args.source.init_args.max_documents=3",
                    '--trainer.callbacks+={"class_path": "test_cli.RecordMediaCounts"}']
    # Both ranks start at once on a cold cache: the built-in media and the tokenizer must each be prepared
    # by one process while the other waits (the same lock serves a user's media scan; the kit's own media
    # are not scanned), and both ranks must train on the same items.
    cache = in_tmp_dir / "cold-cache"
    errors = launch_like_torchrun(in_tmp_dir, cache, 2, *mostly_media, "--trainer.devices=2",
                                  "--trainer.logger.init_args.run_name=two")
    both = "".join(errors)
    assert both.count("Generating 200 built-in pictures") == 1, both[-3000:]
    assert both.count("Training a 512-token byte-level BPE tokenizer") == 1, both[-3000:]
    assert "Scanning " not in both, both[-3000:]
    assert len(list((cache / "tokenizers").glob("*.json"))) == 1
    assert [p.name for p in (cache / "media").iterdir() if p.is_dir()] == [f"synthetic-{p.stem[10:]}" for p in
                                                                             (cache / "media").glob("*.lock")]
    digests = [re.findall(r"media items ([0-9a-f]{12})", err) for err in errors]
    assert len(digests[0]) == 1 and digests[0] == digests[1], digests  # both ranks hold the same items
    counts = [json.loads(line) for line in (in_tmp_dir / "media_counts.jsonl").read_text().splitlines()]
    by_step = {}
    for row in counts:
        by_step.setdefault(row["step"], []).append(row)
    lopsided = [step for step, rows in by_step.items() for m in ("image", "audio")
                if len(rows) == 2 and min(r[m] for r in rows) == 0 < max(r[m] for r in rows)]
    assert lopsided, f"no step had one rank without a modality: {counts}"

    env = {**environment(), "CONSTELLATION_KIT_CACHE": str(cache)}
    result = subprocess.run(command(*mostly_media, "--trainer.devices=1", "--trainer.logger.init_args.run_name=one"),
                            cwd=in_tmp_dir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training a " not in result.stderr and "Scanning " not in result.stderr  # the warm cache serves it
    two, one = losses(in_tmp_dir, "two"), losses(in_tmp_dir, "one")
    assert sorted(two) == sorted(one) == [0, 1, 2, 3]
    # Not equal to 1e-5 as text is: each rank averages over its own scored tokens (placeholders are
    # unscored, and their number differs per rank), and InfoNCE's negatives are the rank's own items.
    # Measured: 8e-8 at step 0 (text rows only on both ranks), then 4.0e-4, 2.5e-3 and 1.7e-3 relative.
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=5e-3)


# -- resume safety: refused with a one-line reason, in-process ---------------------------------------------


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding a 1-step tiny run (checkpoint and mlflow.db): each test resumes a copy."""
    workdir = tmp_path_factory.mktemp("one-step")
    with pytest.MonkeyPatch.context() as patch:
        enter_run_directory(patch, workdir)
        ConstellationCLI(args=["fit", f"--config={TINY}", *SMALL_DATA, "--trainer.max_steps=1",
                               "--trainer.limit_val_batches=0", *CHECKPOINT_EVERY_STEP])
    return workdir


def resume_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    """stderr of a `fit --ckpt_path last` that the console script refuses (exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(["fit", f"--config={TINY}", *SMALL_DATA, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
              "--ckpt_path=last", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_resume_on_changed_data_names_the_change_unless_told_ok(
    one_step_run: Path, in_tmp_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    shutil.copytree(one_step_run, in_tmp_dir, dirs_exist_ok=True)
    changed = ["--data.init_args.seq_len=48", "--data.init_args.global_batch_size=8"]
    err = resume_error(capsys, *changed)
    assert "seq_len 32 -> 48" in err and "global_batch_size 4 -> 8" in err and "--resume_data_mismatch ok" in err
    # Told it is fine: the resume goes ahead (the checkpoint is at max_steps, so it ends at once).
    main(["fit", f"--config={TINY}", *SMALL_DATA, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
          "--ckpt_path=last", *changed, "--resume_data_mismatch=ok"])


def test_a_changed_manifest_changes_the_data_fingerprint(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"text": "one document"}\n')
    before = MultimodalDataModule(source=None, manifest=str(manifest)).data_fingerprint()
    manifest.write_text('{"text": "another document"}\n')
    after = MultimodalDataModule(source=None, manifest=str(manifest)).data_fingerprint()
    assert [key for key in before if before[key] != after[key]] == ["manifest"]


def test_resuming_a_deleted_mlflow_run_says_what_to_do(one_step_run: Path, in_tmp_dir: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(one_step_run, in_tmp_dir, dirs_exist_ok=True)
    client = mlflow.MlflowClient(f"sqlite:///{in_tmp_dir / 'mlflow.db'}")  # absolute: MLflow caches stores by URI
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    client.delete_run(run.info.run_id)
    err = resume_error(capsys)
    assert f"MLflow run {run.info.run_id} was deleted" in err and "mlflow runs restore" in err
    assert f"--ckpt_path runs/tiny/tiny/{run.info.run_id}/checkpoints/last.ckpt" in err


def test_resuming_a_run_directory_moved_without_its_store_says_what_to_do(
    one_step_run: Path, in_tmp_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    shutil.copytree(one_step_run / "runs", in_tmp_dir / "runs")  # moved here; its mlflow.db stayed behind
    err = resume_error(capsys)
    assert f"is not in the tracking store sqlite:///{in_tmp_dir.resolve() / 'mlflow.db'}" in err
    assert "--trainer.logger.init_args.tracking_uri" in err and "--ckpt_path runs/tiny/tiny/" in err
