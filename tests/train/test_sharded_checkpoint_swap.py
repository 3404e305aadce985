"""The sharded-checkpoint swap survives a kill inside every one of its steps.

Each save runs in a forked child over a real directory tree; a fault hook (or a patched ``os.unlink``,
to land inside an ``rmtree``) SIGKILLs the child at the n-th step, for every n until a save runs
through. After each kill, ``last.ckpt`` must still name a complete checkpoint, the old or the new,
and the next save must succeed and leave nothing behind. No timing is involved.
"""

import os
import signal
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from constellation_kit import checkpointing
from constellation_kit.checkpointing import (
    commit_checkpoint_swap,
    find_last_checkpoint,
    new_token,
    prepare_checkpoint_swap,
    resolve_checkpoint,
    staging_path,
)
from conftest import free_port

SHARDS = 3  # files per checkpoint, so that removing one takes several unlinks to interrupt


def write_checkpoint(directory: Path, content: str) -> None:
    """A stand-in for what the ranks write: a few shard files, all carrying ``content``."""
    (directory / "shards").mkdir(parents=True)
    for i in range(SHARDS):
        (directory / "shards" / f"{i}.distcp").write_text(f"{content} shard {i}")
    (directory / "meta.pt").write_text(content)


def read_complete(checkpoint: Path) -> str:
    """The content of a checkpoint, after checking that every file of it is there and whole."""
    content = (checkpoint / "meta.pt").read_text()
    for i in range(SHARDS):
        assert (checkpoint / "shards" / f"{i}.distcp").read_text() == f"{content} shard {i}", checkpoint
    return content


def save(path: Path, content: str) -> None:
    """One save as FSDP2Strategy does it, with the ranks' write in the middle."""
    token = new_token()
    prepare_checkpoint_swap(path)
    write_checkpoint(staging_path(path, token), content)
    commit_checkpoint_swap(path, token)


def legacy_directory(checkpoints: Path) -> None:
    """``last.ckpt`` as a real directory, as the earlier rename-based swap left it."""
    write_checkpoint(checkpoints / "last.ckpt", "old")


def legacy_wedged(checkpoints: Path) -> None:
    """What a kill inside the earlier swap's rmtree left: a non-empty ``.old``, plus stale temporaries."""
    legacy_directory(checkpoints)
    write_checkpoint(checkpoints / ".last.ckpt.old", "older")
    (checkpoints / ".last.ckpt.old" / "shards" / "0.distcp").unlink()  # half removed
    write_checkpoint(checkpoints / ".last.ckpt.tmp", "partial")
    (checkpoints / ".last.ckpt.x1y2z3_4.tmp").write_bytes(b"half a file")  # AtomicCheckpointIO's


def linked(checkpoints: Path) -> None:
    """``last.ckpt`` as this kit writes it now: a link to a hidden complete directory."""
    save(checkpoints / "last.ckpt", "old")


def in_child(action: Callable[[], None], log: Path) -> int:
    """Run ``action`` in a forked child; return the signal that ended it (0: it finished)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            action()
            os._exit(0)
        except BaseException:
            log.write_text(traceback.format_exc())
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) == 0, log.read_text()
        return 0
    return os.WTERMSIG(status)


def kill_at_step(n: int, trail: Path) -> None:
    """In the child: SIGKILL just before the n-th step of the swap (counting from 0)."""
    seen = []

    def hook(step: str) -> None:
        seen.append(step)
        with open(trail, "a") as f:
            f.write(step + "\n")
        if len(seen) > n:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpointing.fault_hook = hook


def kill_at_unlink(n: int, trail: Path) -> None:
    """In the child: SIGKILL right after the n-th file removal, which lands inside an rmtree."""
    real_unlink, calls = os.unlink, []

    def unlink(*args, **kwargs) -> None:
        real_unlink(*args, **kwargs)
        calls.append(args[0])
        with open(trail, "a") as f:
            f.write(f"unlink {args[0]}\n")
        if len(calls) > n:
            os.kill(os.getpid(), signal.SIGKILL)

    os.unlink = unlink  # shutil.rmtree looks os.unlink up at each call


def assert_clean(checkpoints: Path, expected: dict[str, str]) -> None:
    """Only the named checkpoints remain, each a link to its one hidden directory, with ``expected`` content."""
    names = sorted(p.name for p in checkpoints.iterdir())
    targets = sorted(os.readlink(checkpoints / name) for name in expected)
    assert names == sorted([*expected, *targets]), names
    for name, content in expected.items():
        assert (checkpoints / name).is_symlink()
        assert read_complete(checkpoints / name) == content


@pytest.mark.parametrize("start", [linked, legacy_directory, legacy_wedged], ids=lambda f: f.__name__)
@pytest.mark.parametrize("kill", [kill_at_step, kill_at_unlink], ids=["at-each-step", "inside-each-rmtree"])
def test_a_kill_anywhere_in_a_save_leaves_a_complete_checkpoint_and_the_next_save_cleans_up(
    start: Callable[[Path], None], kill: Callable[[int, Path], None], tmp_path: Path
) -> None:
    kills = 0
    for n in range(100):
        run = tmp_path / str(n)
        checkpoints, trail = run / "checkpoints", run / "trail.log"
        checkpoints.mkdir(parents=True)
        start(checkpoints)
        save(checkpoints / "step0000001.ckpt", "neighbour")  # another checkpoint's files must survive
        last = checkpoints / "last.ckpt"

        def doomed_save() -> None:
            kill(n, trail)
            save(last, "new")

        signal_number = in_child(doomed_save, run / "error.log")
        where = trail.read_text().splitlines()[-1] if trail.exists() else "before the first step"
        if signal_number == 0:
            assert read_complete(last) == "new"
            break
        assert signal_number == signal.SIGKILL
        kills += 1
        # The run still has a complete checkpoint, the old one or the new one.
        found = resolve_checkpoint(last)
        assert found is not None, f"killed at {where}: no checkpoint left"
        assert read_complete(found) in ("old", "new"), f"killed at {where}"
        if not last.exists():
            # Only inside the one-time migration of a real directory, before its link is in place.
            assert start is not linked and "migrate" in trail.read_text().splitlines()[-3:], where
            assert find_last_checkpoint(run.parent) is not None
        # The next save works from whatever was left, and leaves nothing else behind.
        save(last, "next")
        assert_clean(checkpoints, {"last.ckpt": "next", "step0000001.ckpt": "neighbour"})
    else:
        pytest.fail("the save never ran through")
    assert kills >= 4  # the hook really fired inside the swap, not only before or after it


def test_a_save_replaces_a_single_file_checkpoint_without_a_gap(tmp_path: Path) -> None:
    # A run that switched to sharded checkpoints: the file is replaced by the link in one rename.
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"a single-file checkpoint")
    save(last, "new")
    assert_clean(tmp_path, {"last.ckpt": "new"})


def test_a_save_keeps_directories_that_other_links_point_to_however_they_are_written(tmp_path: Path) -> None:
    # An absolute link, and Lightning's save_last="link" chain (last.ckpt -> step file -> hidden dir).
    save(tmp_path / "step0000001.ckpt", "one")
    target = tmp_path / os.readlink(tmp_path / "step0000001.ckpt")
    (tmp_path / "absolute.ckpt").symlink_to(target)
    (tmp_path / "step0000001.ckpt").unlink()
    save(tmp_path / "step0000002.ckpt", "two")
    (tmp_path / "last.ckpt").symlink_to("step0000002.ckpt")
    save(tmp_path / "step0000003.ckpt", "three")
    assert read_complete(tmp_path / "absolute.ckpt") == "one"
    assert read_complete(tmp_path / "last.ckpt") == "two"


def test_removing_a_linked_checkpoint_removes_its_directory(tmp_path: Path) -> None:
    save(tmp_path / "step0000001.ckpt", "one")
    save(tmp_path / "step0000002.ckpt", "two")
    checkpointing.remove_checkpoint(tmp_path / "step0000001.ckpt")
    assert_clean(tmp_path, {"step0000002.ckpt": "two"})


def test_distributed_checkpoint_reads_through_the_link(tmp_path: Path) -> None:
    # torch.distributed.checkpoint's FileSystemReader opens files under the link like a directory.
    last, token = tmp_path / "last.ckpt", new_token()
    prepare_checkpoint_swap(last)
    dcp.save({"w": torch.arange(6.0)}, checkpoint_id=staging_path(last, token))
    commit_checkpoint_swap(last, token)
    assert last.is_symlink() and (last / ".metadata").is_file()
    loaded = {"w": torch.zeros(6)}
    dcp.load(loaded, checkpoint_id=last)
    assert torch.equal(loaded["w"], torch.arange(6.0))


# -- the strategy: two real ranks (forked, gloo) ----------------------------------------------------


def two_rank_save(tmp_path: Path, port: int, fail_on_rank_zero_at: str | None) -> list[str]:
    """Both ranks call FSDP2Strategy.save_checkpoint; returns each rank's outcome ("ok" or the error)."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    from constellation_kit.train.strategy import FSDP2Strategy

    outcomes = []
    pids = []
    for rank in range(2):
        pid = os.fork()
        if pid == 0:
            outcome = tmp_path / f"rank{rank}.txt"
            try:
                signal.alarm(60)  # a hang must fail the test, not wedge it
                dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
                environment = LightningEnvironment()
                environment.set_global_rank(rank)
                environment.set_world_size(2)
                strategy = FSDP2Strategy(process_group_backend="gloo")
                strategy.cluster_environment = environment
                strategy.parallel_devices = [torch.device("cpu")] * 2
                if rank == 0 and fail_on_rank_zero_at is not None:

                    def hook(step: str) -> None:
                        if step == fail_on_rank_zero_at:
                            raise PermissionError("injected")

                    checkpointing.fault_hook = hook
                state = {"state_dict": {"w": torch.full((4,), float(rank))}, "global_step": 7}
                strategy.save_checkpoint(state, tmp_path / "last.ckpt")
                outcome.write_text("ok")
            except BaseException as e:  # noqa: BLE001 (reported to the parent)
                outcome.write_text(f"{type(e).__name__}: {e}")
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), f"a rank died with signal {os.WTERMSIG(status)} (a hang hits the alarm)"
    for rank in range(2):
        outcomes.append((tmp_path / f"rank{rank}.txt").read_text())
    return outcomes


def test_two_ranks_save_through_the_link_and_a_rank_zero_failure_raises_on_every_rank(tmp_path: Path) -> None:
    assert two_rank_save(tmp_path, free_port(), None) == ["ok", "ok"]
    last = tmp_path / "last.ckpt"
    assert last.is_symlink() and (last / ".metadata").is_file() and (last / "meta.pt").is_file()
    first = os.readlink(last)

    # Rank 0 fails while swapping: rank 1 must raise too rather than wait forever, and the first
    # checkpoint must stay in place.
    outcomes = two_rank_save(tmp_path, free_port(), "replace")
    assert all(o.startswith("RuntimeError") and "rank 0" in o and "injected" in o for o in outcomes), outcomes
    assert os.readlink(last) == first

    # The next save recovers from what the failed one left.
    assert two_rank_save(tmp_path, free_port(), None) == ["ok", "ok"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("rank")) == sorted(
        ["last.ckpt", os.readlink(last)]
    )
