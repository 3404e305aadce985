"""Single-file checkpoints (AtomicCheckpointIO), finding the checkpoint to resume from, and weights_only."""

import io
import pickle
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from constellation_kit.checkpointing import AtomicCheckpointIO, find_last_checkpoint
from constellation_kit.cli import ConstellationCLI, main
from constellation_kit.errors import ConfigError
from conftest import SMALL_DATA, TINY


def state(step: int) -> dict:
    return {"global_step": step, "state_dict": {"w": torch.full((64,), float(step))}}


def loads_as(path: Path, step: int) -> None:
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == step and torch.equal(loaded["state_dict"]["w"], state(step)["state_dict"]["w"])


# -- AtomicCheckpointIO ------------------------------------------------------------------------------


def test_atomic_checkpoint_round_trips_and_leaves_no_stray_files(tmp_path: Path) -> None:
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint(state(1), tmp_path / "last.ckpt")
    io_.save_checkpoint(state(2), tmp_path / "last.ckpt")  # overwrites in place
    loaded = io_.load_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert loaded["global_step"] == 2 and torch.equal(loaded["state_dict"]["w"], state(2)["state_dict"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_atomic_checkpoint_refuses_storage_options(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint(state(1), tmp_path / "last.ckpt", storage_options={"anon": True})
    assert not list(tmp_path.iterdir())


def test_a_kill_halfway_through_a_write_keeps_the_previous_checkpoint_and_the_next_save_cleans_up(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(state(1), last)

    pid = os.fork()
    if pid == 0:  # the child writes half of the next checkpoint's bytes, then is killed
        def half_then_die(obj: object, f: io.BufferedWriter) -> None:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        real_save, torch.save = torch.save, half_then_die
        try:
            AtomicCheckpointIO().save_checkpoint(state(2), last)
        finally:
            os._exit(1)  # not killed: the patch did not reach the write
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    loads_as(last, 1)  # the previous checkpoint, whole
    (stray,) = [p for p in tmp_path.iterdir() if p != last]  # the half-written one, under a name never resumed from
    assert stray.name.startswith(".last.ckpt.") and stray.name.endswith(".tmp") and stray.stat().st_size > 0

    AtomicCheckpointIO().save_checkpoint(state(3), tmp_path / "step0000003.ckpt")  # any save in the directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step0000003.ckpt"]
    loads_as(last, 1)


# -- find_last_checkpoint -----------------------------------------------------------------------------


def checkpoint_at(run: Path, mtime: float, kind: str = "file") -> Path:
    """``<run>/checkpoints/last.ckpt`` as a file, a sharded directory, or a link to a hidden directory."""
    checkpoints = run / "checkpoints"
    checkpoints.mkdir(parents=True)
    last = checkpoints / "last.ckpt"
    if kind == "file":
        last.write_bytes(b"checkpoint")
        target = last
    else:
        target = checkpoints / (".last.ckpt.0000000000000000001-00000000" if kind == "link" else "last.ckpt")
        target.mkdir()
        (target / ".metadata").write_bytes(b"dcp")
        if kind == "link":
            last.symlink_to(target.name)
    os.utime(target, (mtime, mtime))
    return last


@pytest.mark.parametrize("newest_kind", ["file", "directory", "link"])
def test_find_last_checkpoint_picks_the_newest_run_of_the_group(tmp_path: Path, newest_kind: str) -> None:
    group, now = tmp_path / "runs" / "tiny" / "tiny", time.time()
    checkpoint_at(group / "run-a", now - 300, "link")
    newest = checkpoint_at(group / "run-b", now - 10, newest_kind)
    checkpoint_at(group / "run-c", now - 200, "directory")
    (group / "run-d" / "checkpoints").mkdir(parents=True)  # killed before its first checkpoint
    (group / "run-e").mkdir()  # no checkpoints directory at all
    # An older run whose link target is newer than every link's own time: the target's time counts.
    old_link = checkpoint_at(group / "run-f", now - 400, "link")
    os.utime(old_link, (now, now), follow_symlinks=False)

    found = find_last_checkpoint(group)
    assert found == newest
    assert found.parent.parent.name == "run-b"  # what `--ckpt_path last` takes as the MLflow run id


def test_find_last_checkpoint_finds_a_migration_interrupted_before_its_link(tmp_path: Path) -> None:
    # A kill between moving an old-style directory aside and linking to it: the hidden one is found.
    hidden = tmp_path / "run-a" / "checkpoints" / ".last.ckpt.0000000000000000001-00000000"
    hidden.mkdir(parents=True)
    assert find_last_checkpoint(tmp_path) == hidden


def test_find_last_checkpoint_with_no_checkpoint_says_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "run-a" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run-a" / "checkpoints" / "step0000004.ckpt").write_bytes(b"not last")
    (tmp_path / "run-a" / "checkpoints" / ".last.ckpt.x1y2z3_4.tmp").write_bytes(b"a partial write")
    (tmp_path / "run-b" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run-b" / "checkpoints" / "last.ckpt").symlink_to(".last.ckpt.gone")  # dangling
    with pytest.raises(ConfigError) as error:
        find_last_checkpoint(tmp_path)
    assert f"no checkpoint matches {tmp_path}/*/checkpoints/last.ckpt" in str(error.value)
    assert "Start the run without --ckpt_path" in str(error.value)


# -- weights_only -------------------------------------------------------------------------------------


class NotWeights:
    """A pickled object that is not a tensor or a plain value: what a malicious checkpoint would carry."""


class ParserBuilt(Exception):
    """Raised with the parser once it is built: the defaults are known before any argument is parsed."""


class ParserOnly(ConstellationCLI):
    def parse_arguments(self, parser, args) -> None:
        raise ParserBuilt(self)


def test_weights_only_defaults_to_true_for_every_subcommand_that_loads_a_checkpoint() -> None:
    with pytest.raises(ParserBuilt) as built:
        ParserOnly(args=[])
    parsers = built.value.args[0]._subcommand_parsers
    defaults = {name: parsers[name].get_defaults().get("weights_only") for name in ("fit", "validate", "test", "predict")}
    assert defaults == dict.fromkeys(defaults, True)


@pytest.mark.parametrize("flag, refused", [([], True), (["--weights_only=false"], False)], ids=["default", "false"])
def test_a_checkpoint_with_a_pickled_object_is_refused_unless_weights_only_is_false(
    flag: list[str], refused: bool, in_tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = in_tmp_dir / "evil.ckpt"
    torch.save({**state(1), "payload": NotWeights()}, evil)
    seen = {}

    def load_only(trainer: Trainer, model, datamodule=None, ckpt_path=None, verbose=True, weights_only=None):
        # Stand in for validation at the point where it reads the checkpoint: the CLI's value of
        # weights_only, through the trainer's own CheckpointIO, without preparing data or a model.
        seen["weights_only"] = weights_only
        seen["loaded"] = trainer.strategy.load_checkpoint(ckpt_path, weights_only=weights_only)

    monkeypatch.setattr(Trainer, "validate", load_only)
    args = ["validate", f"--config={TINY}", *SMALL_DATA, f"--ckpt_path={evil}", *flag]
    if refused:
        # Lightning's CLI reads a file checkpoint's hyperparameters with weights_only=True on its own
        # (a sharded checkpoint's it skips): set that aside, so the refusal below is the trainer's.
        monkeypatch.setattr(LightningCLI, "_parse_ckpt_path", lambda self: None)
        with pytest.raises(pickle.UnpicklingError, match="NotWeights"):
            main(args)
        assert seen == {"weights_only": True}
    else:
        main(args)
        assert seen["weights_only"] is False and isinstance(seen["loaded"]["payload"], NotWeights)
