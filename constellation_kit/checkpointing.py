"""Checkpoints that are either complete or absent, and finding the one to resume from.

Two kinds of checkpoint are written, and neither may ever be seen half-written, nor missing while a
run has one:

- a single file (one process, or a gathered state dict): :class:`AtomicCheckpointIO` writes it to a
  temporary file beside the target and renames it onto the target, which replaces it atomically;
- a sharded checkpoint (PyTorch distributed checkpoint, a directory every rank writes into): a
  directory cannot be renamed onto a non-empty one, so the name a user sees (``last.ckpt``) is a
  symbolic link to a hidden directory, and a save swaps in a fresh link (:func:`commit_checkpoint_swap`)::

      last.ckpt -> .last.ckpt.<token>/          the complete checkpoint the run resumes from
                   .last.ckpt.<token2>.tmp/     being written by every rank
      then, rank 0 only:
        rename   .last.ckpt.<token2>.tmp  ->  .last.ckpt.<token2>   (complete: every rank wrote)
        symlink  .last.ckpt.<token2>.link -> .last.ckpt.<token2>
        replace  .last.ckpt.<token2>.link  ->  last.ckpt             (the one atomic switch)
        remove   .last.ckpt.<token>/ and any other leftover

At every instant ``last.ckpt`` names a complete checkpoint, the old one or the new one. A kill at any
point leaves only hidden leftovers, which the next save removes (:func:`prepare_checkpoint_swap`).
The swap is plain file-system work, done by one process, with no ``torch.distributed`` in it: the
strategy runs it on rank 0 and tells every rank how it went.
"""

import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from constellation_kit.data.cache import write_atomically
from constellation_kit.errors import ConfigError

# A token names one save: time first, so the newest of several sorts last; random bits so that two
# saves in the same nanosecond (or from two clocks) never collide.
_TOKEN = r"\d{19}-[0-9a-f]{8}"
# What a save may leave beside a checkpoint named NAME, as hidden entries ".NAME.<suffix>":
#   <token>          a complete sharded checkpoint (the target of NAME, or retired)
#   <token>.tmp      a sharded checkpoint being written
#   <token>.link     a fresh link not yet moved onto NAME
#   xxxxxxxx.tmp     a single file being written (tempfile.mkstemp's 8 random characters)
#   tmp, old         the staging and retired directories of the kit's earlier rename-based swap
_LEFTOVER = re.compile(rf"^\.(?P<name>.+)\.(?P<suffix>(?P<token>{_TOKEN})(\.tmp|\.link)?|[a-z0-9_]{{8}}\.tmp|tmp|old)$")

fault_hook: Callable[[str], None] | None = None
"""Called with a step's name just before each step of a swap. Tests set it to kill the process there."""


def _step(name: str) -> None:
    if fault_hook is not None:
        fault_hook(name)


def new_token() -> str:
    """A fresh name for one save: sorts by time, unique with overwhelming probability."""
    return f"{time.time_ns():019d}-{secrets.token_hex(4)}"


def staging_path(path: Path, token: str) -> Path:
    """The hidden directory the ranks write save ``token`` of checkpoint ``path`` into."""
    return path.with_name(f".{path.name}.{token}.tmp")


def _committed_path(path: Path, token: str) -> Path:
    return path.with_name(f".{path.name}.{token}")


def _committed_checkpoints(path: Path) -> list[Path]:
    """The complete hidden checkpoints of ``path`` (current and not yet retired), oldest first."""
    found = []
    for entry in path.parent.glob(f".{glob_escape(path.name)}.*"):
        match = _LEFTOVER.match(entry.name)
        if match and match["name"] == path.name and match["suffix"] == match["token"] and entry.is_dir():
            found.append(entry)
    return sorted(found, key=lambda p: p.name)


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _fsync_dir(directory: Path) -> None:
    # Make a rename durable, not only atomic: without it a power cut could forget the new link.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _point(path: Path, target: Path) -> None:
    """Make ``path`` a symlink to ``target`` (a sibling) in one atomic step, whatever ``path`` was if not a directory."""
    link = target.with_name(f"{target.name}.link")
    if os.path.lexists(link):  # left by a kill between the two steps below
        os.unlink(link)
    _step("link")
    os.symlink(target.name, link)  # relative: the run directory can move
    _step("replace")
    os.replace(link, path)
    _fsync_dir(path.parent)


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete every hidden leftover of a save in ``directory`` that no checkpoint link points to.

    Leftovers are partial writes, unused fresh links and retired checkpoints, recognised by name
    (see ``_LEFTOVER``). Only one process may save into a directory at a time (rank 0 of one run),
    so nothing found here is being written. Returns what was removed.
    """
    if not directory.is_dir():
        return []
    entries = list(directory.iterdir())
    # Final targets of the checkpoints' links (relative or absolute, through a chain such as
    # ModelCheckpoint's save_last="link"), not of a fresh ".link" that never replaced its name.
    referenced = {os.path.realpath(e) for e in entries if e.is_symlink() and not _LEFTOVER.match(e.name)}
    removed = []
    for entry in sorted(entries):
        if not _LEFTOVER.match(entry.name) or os.path.realpath(entry) in referenced:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry)
    return removed


def prepare_checkpoint_swap(path: Path) -> None:
    """Bring checkpoint ``path`` to a known state before a save writes its staging directory.

    Idempotent, and safe to interrupt at any point (the next call finishes the job):

    1. ``migrate``: a ``path`` that is a real directory (a sharded checkpoint from before links)
       becomes a hidden complete checkpoint with ``path`` linked to it. Between that rename and the
       link there is no ``path``, the one window this module has; :func:`resolve_checkpoint` and
       step 2 recover from it, and it happens once per run directory.
    2. ``repair``: a missing or dangling ``path`` is linked to the newest complete hidden checkpoint.
    3. ``clean``: leftovers of killed saves are removed (:func:`remove_leftovers`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _step("migrate")
    if path.is_dir() and not path.is_symlink():
        legacy = _committed_path(path, new_token())
        os.rename(path, legacy)
        _point(path, legacy)
    _step("repair")
    if not path.exists() and (complete := _committed_checkpoints(path)):
        _point(path, complete[-1])
    _step("clean")
    remove_leftovers(path.parent)


def commit_checkpoint_swap(path: Path, token: str) -> None:
    """Make the fully written :func:`staging_path` of ``token`` the checkpoint ``path``.

    Steps, each a point where a kill leaves ``path`` naming a complete checkpoint (old or new):

    1. ``sync``: fsync the staged files, so the link never outlives the data after a power cut;
    2. ``commit``: rename the staging directory to its complete name;
    3. ``link`` then ``replace``: a fresh symlink to it is renamed onto ``path`` (atomic; a plain
       file at ``path`` is replaced the same way);
    4. ``retire``: the previous target and every other leftover are removed.
    """
    staging = staging_path(path, token)
    if not staging.is_dir():
        raise FileNotFoundError(f"no staged checkpoint at {staging}")
    _step("sync")
    for file in staging.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)  # fsync needs no write access on Linux/macOS
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _step("commit")
    committed = _committed_path(path, token)
    os.rename(staging, committed)
    if path.is_dir() and not path.is_symlink():
        # Not prepared (a legacy directory appeared since): move it aside first; see prepare's step 1.
        os.rename(path, _committed_path(path, new_token()))
    _point(path, committed)
    _step("retire")
    remove_leftovers(path.parent)


def remove_checkpoint(path: Path) -> None:
    """Delete checkpoint ``path``: a file, a directory, or a link together with its hidden target.

    The link goes first, so no name ever points at a half-deleted checkpoint; a kill before the
    target is gone leaves a leftover that the next save in this directory removes.
    """
    if path.is_symlink():
        target = path.parent / os.readlink(path)
        path.unlink()
        if target.is_dir() and _LEFTOVER.match(target.name):
            shutil.rmtree(target)
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def resolve_checkpoint(path: Path) -> Path | None:
    """``path`` if it names a complete checkpoint; else the newest complete hidden one it was swapping to; else ``None``.

    The fallback covers a kill inside :func:`prepare_checkpoint_swap`'s one-time migration, the only
    moment ``path`` can be missing while a complete checkpoint exists.
    """
    if path.exists():
        return path
    complete = _committed_checkpoints(path)
    return complete[-1] if complete else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint to a temporary file beside the target, fsyncs it, then renames it.

    A run killed mid-write leaves the previous ``last.ckpt`` intact and at worst a stray
    ``.last.ckpt.*.tmp``, never a truncated checkpoint that a resume would pick up; the next save
    into the same directory removes such strays. (Lightning's own save goes through an fsspec
    transaction whose temporary file may sit on another file system, where the final move is a
    copy that can be interrupted.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically. ``storage_options`` are refused: the file is local."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        remove_leftovers(path.parent)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

        write_atomically(path, write)

    def remove_checkpoint(self, path: _PATH) -> None:
        """Delete a checkpoint file, directory, or link with its hidden target (see :func:`remove_checkpoint`)."""
        remove_checkpoint(Path(path))


def find_last_checkpoint(run_group_dir: Path) -> Path:
    """The newest ``<run_group_dir>/<run_id>/checkpoints/last.ckpt``, or a :class:`ConfigError` saying where it looked.

    "Newest" is by modification time of the checkpoint itself (a link's target). ``last.ckpt`` may be
    a file, a sharded checkpoint directory, or a link to one; a run directory without a checkpoint
    is passed over.
    """
    candidates = []
    for checkpoints in run_group_dir.glob("*/checkpoints"):
        found = resolve_checkpoint(checkpoints / "last.ckpt")
        if found is not None:
            candidates.append(found)
    if not candidates:
        raise ConfigError(
            f"--ckpt_path last: no checkpoint matches {run_group_dir}/*/checkpoints/last.ckpt. "
            "Start the run without --ckpt_path, or pass the path of a .ckpt file"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)
