"""Random-number-generator state in checkpoints, one per rank, so a resumed run draws what the straight run drew.

Without it, ``--ckpt_path last`` restores weights, optimizer, schedule and data position, but dropout
masks (and anything else drawn from the global generators in a training step) restart from the seed.
:class:`RNGStateCheckpoint` saves torch's CPU generator, every visible CUDA generator, numpy's and
Python's, per rank, in every checkpoint, and puts them back just before the first resumed training step.

Where the states are kept: ``checkpoint["rng_states"] = {"world_size": W, "ranks": [state_0, ...]}``.
Checkpoints are written by rank 0 alone (a single file, or the ``meta.pt`` of a sharded checkpoint,
whose non-tensor part only rank 0 writes), so every rank's state is first gathered to all ranks
(:func:`gather_rank_states`) and each rank takes its own on load (:func:`state_for_rank`).

Resuming at another world size: ranks that the checkpoint has a state for take it; a rank beyond them
derives its state deterministically from the checkpoint and its rank (:func:`derive_state`), with a
warning, since that run can no longer match the straight one draw for draw (its data per rank differs
too). States of ranks that no longer exist are dropped.

For the stream to line up, nothing may draw from the global generators between the save (at the end
of a training step) and the next training step in one run but not in the other. Two things would:

- validation (the straight run validates after step N, a run resumed from step N's checkpoint does
  not: Lightning skips it), and each DataLoader iterator, which draws its workers' base seed from the
  global torch generator. The callback saves and restores the generators around every validation pass,
  so validation (ValidateAtStart's and the periodic ones) never changes the training stream;
- a new training-data iterator (after a resume, and at each epoch). The kit's data modules give their
  training loader its own generator (:class:`SeededLoader`), so worker seeds are a function of
  (data seed, rank, epoch) and the same after a resume as in the straight run.

Data augmentation in workers is seeded per item, not from the workers' generators
(:func:`constellation_kit.data.multimodal_dataset.seeded`): a mid-epoch resume restarts workers
fresh, which no saved state could rewind.
"""

import hashlib
import logging
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "rng_states"
"""Top-level checkpoint key holding ``{"world_size": W, "ranks": [state per rank]}``."""

RNGState = dict[str, Any]
"""One process's generators: ``torch`` (ByteTensor), ``torch.cuda`` (list of ByteTensors), ``numpy``, ``python``."""


def collect_rng_state() -> RNGState:
    """This process's torch (CPU and every visible CUDA device), numpy and Python generator states.

    Only tensors and plain values, so the checkpoint loads with ``torch.load(weights_only=True)``
    (numpy's key array would not: it is stored as a tensor).
    """
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }


def apply_rng_state(state: RNGState) -> None:
    """Set this process's generators to ``state`` (as :func:`collect_rng_state` returned it)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("torch.cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another number of visible devices: the process's own device is the one it trains on
            torch.cuda.set_rng_state(cuda[0])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def gather_rank_states(local: RNGState, world_size: int, all_gather_object: Callable[[list, Any], None] | None) -> dict[str, Any]:
    """Every rank's state, in rank order, as the checkpoint stores it.

    ``all_gather_object`` is :func:`torch.distributed.all_gather_object` in a multi-process run (each
    rank contributes its ``local`` state; every rank receives all), ``None`` in a single process.
    """
    if world_size == 1 or all_gather_object is None:
        return {"world_size": 1, "ranks": [local]}
    states: list[Any] = [None] * world_size
    all_gather_object(states, local)
    return {"world_size": world_size, "ranks": states}


def derive_state(saved: dict[str, Any], rank: int) -> RNGState:
    """A state for a rank the checkpoint has none for: seeded from the saved states and ``rank``, so
    the same checkpoint and rank always give the same draws."""
    digest = hashlib.blake2b(digest_size=8)
    for state in saved["ranks"]:
        digest.update(state["torch"].numpy().tobytes())
    digest.update(f"rank={rank}".encode())
    seed = int.from_bytes(digest.digest(), "little")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch_state = torch.get_rng_state()
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available():
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
            torch.cuda.manual_seed_all(seed)
            cuda = torch.cuda.get_rng_state_all()
    keys = np.random.RandomState(seed % 2**32).get_state()[1]
    return {
        "torch": torch_state,
        "torch.cuda": cuda,
        "numpy": {"kind": "MT19937", "keys": torch.from_numpy(keys.astype(np.int64)), "pos": 624,
                  "has_gauss": 0, "cached_gaussian": 0.0},
        "python": random.Random(seed).getstate(),
    }


def state_for_rank(saved: dict[str, Any], rank: int, world_size: int) -> RNGState:
    """The state ``rank`` of a ``world_size``-rank run resumes with, from a checkpoint's :data:`CHECKPOINT_KEY` entry.

    Its own saved state when the checkpoint has one; otherwise :func:`derive_state`. Warns (rank 0)
    when the world size changed, since the run then cannot match the straight one draw for draw.
    """
    saved_world = saved["world_size"]
    if saved_world != world_size and rank == 0:
        log.warning(
            "the checkpoint holds RNG states for %d rank(s), this run has %d: ranks below %d resume their own, "
            "%s; dropout masks will not match an uninterrupted run at the old world size",
            saved_world, world_size, min(saved_world, world_size),
            f"ranks {saved_world}..{world_size - 1} derive theirs from the checkpoint and their rank"
            if world_size > saved_world else f"the states of ranks {world_size}..{saved_world - 1} are dropped",
        )
    if rank < saved_world:
        return saved["ranks"][rank]
    return derive_state(saved, rank)


class RNGStateCheckpoint(Callback):
    """Saves every rank's RNG state in each checkpoint and restores it when a run resumes.

    The CLI adds it to every run (a recipe need not name it); see the module docstring for where
    the states live and why validation runs with the generators saved and restored around it.
    """

    def __init__(self) -> None:
        self._pending: RNGState | None = None
        self._around_validation: RNGState | None = None

    # -- saving ----------------------------------------------------------------------------------

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # Called on every rank (Lightning dumps the checkpoint everywhere, then rank 0 writes it), so
        # the gather is a collective every rank enters.
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        gather = torch.distributed.all_gather_object if distributed else None
        # Inside a validation pass (a checkpoint saved on validation end), the training stream is
        # the one saved at its start, not the validation's.
        local = self._around_validation or collect_rng_state()
        checkpoint[CHECKPOINT_KEY] = gather_rank_states(local, trainer.world_size, gather)

    # -- restoring -------------------------------------------------------------------------------

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            if trainer.global_rank == 0:
                log.warning("the checkpoint holds no RNG state (written before the kit saved it): dropout and "
                            "other random draws after the resume will not match an uninterrupted run")
            return
        self._pending = state_for_rank(saved, trainer.global_rank, trainer.world_size)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # As late as possible: after Lightning's seeding, the model's fresh initialisation (then
        # overwritten by the checkpoint), the sanity check and the first data iterator, all of
        # which draw, and just before the first resumed training step.
        if self._pending is not None:
            apply_rng_state(self._pending)
            self._pending = None

    # -- validation leaves the training stream alone ----------------------------------------------

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._around_validation = collect_rng_state()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._around_validation is not None:
            apply_rng_state(self._around_validation)
            self._around_validation = None
