"""Checkpoint files that are either complete or absent, and finding the one to resume from."""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from constellation_kit.data.cache import write_atomically
from constellation_kit.errors import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint to a temporary file beside the target, fsyncs it, then renames it.

    A run killed mid-write leaves the previous ``last.ckpt`` intact and at worst a stray
    ``.last.ckpt.*.tmp``, never a truncated checkpoint that a resume would pick up. (Lightning's
    own save goes through an fsspec transaction whose temporary file may sit on another file
    system, where the final move is a copy that can be interrupted.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

        write_atomically(Path(path), write)


def find_last_checkpoint(run_group_dir: Path) -> Path:
    """The newest ``<run_group_dir>/<run_id>/checkpoints/last.ckpt``, or a :class:`ConfigError` saying where it looked."""
    candidates = sorted(run_group_dir.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(
            f"--ckpt_path last: no checkpoint matches {run_group_dir}/*/checkpoints/last.ckpt. "
            "Start the run without --ckpt_path, or pass the path of a .ckpt file"
        )
    return candidates[-1]
