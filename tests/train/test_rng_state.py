"""RNG state per rank through a checkpoint, and training loaders whose worker seeds survive a resume."""

import io
import logging
import random
from functools import partial

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import Dataset

from constellation_kit.data.sampler import ResumableSampler
from constellation_kit.data.seeded_loader import SeededLoader
from constellation_kit.train.rng_state import (
    apply_rng_state,
    collect_rng_state,
    gather_rank_states,
    state_for_rank,
)


def draws() -> tuple:
    """One draw from each global generator a training step may use."""
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def through_a_checkpoint(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # the CLI's default: states must be plain values and tensors


def rank_state(rank: int) -> dict:
    """The state a rank would hold after seeding with its own seed (ranks differ, as after unequal draws)."""
    torch.manual_seed(rank), np.random.seed(rank), random.seed(rank)
    draws()  # not at a fresh seed: mid-stream, with numpy's cached gaussian in play
    np.random.randn()
    return collect_rng_state()


def test_a_state_round_trips_through_a_weights_only_checkpoint() -> None:
    state = through_a_checkpoint(rank_state(3))
    expected = draws()
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    apply_rng_state(state)
    assert draws() == expected


def test_every_rank_resumes_its_own_state_from_what_rank_0_wrote() -> None:
    states = [rank_state(rank) for rank in range(2)]
    expected = []
    for state in states:
        apply_rng_state(state)
        expected.append(draws())
    assert expected[0] != expected[1]

    # Each rank contributes its own state to a collective; rank 0's result is what it writes.
    def all_gather_object(out: list, local: dict, rank: int) -> None:
        out[:] = states
        assert local is states[rank]

    written = [gather_rank_states(states[r], 2, partial(all_gather_object, rank=r)) for r in range(2)]
    checkpoint = through_a_checkpoint(written[0])
    assert checkpoint["world_size"] == 2
    for rank in range(2):
        apply_rng_state(state_for_rank(checkpoint, rank, world_size=2))
        assert draws() == expected[rank]


def test_a_larger_world_derives_states_for_new_ranks_deterministically(caplog: pytest.LogCaptureFixture) -> None:
    saved = through_a_checkpoint(gather_rank_states(rank_state(0), 1, None))
    with caplog.at_level(logging.WARNING):
        own = state_for_rank(saved, 0, world_size=3)
    assert "1 rank(s), this run has 3" in caplog.text and "derive" in caplog.text
    apply_rng_state(own)
    first = draws()
    derived = []
    for rank in (1, 2, 1):
        apply_rng_state(state_for_rank(saved, rank, world_size=3))
        derived.append(draws())
    assert derived[0] == derived[2]  # the same checkpoint and rank: the same state
    assert len({str(d) for d in (first, *derived[:2])}) == 3  # but no two ranks share one


def test_a_smaller_world_keeps_the_first_ranks_states(caplog: pytest.LogCaptureFixture) -> None:
    states = [rank_state(r) for r in range(2)]
    saved = gather_rank_states(states[0], 2, lambda out, local: out.__setitem__(slice(None), states))
    with caplog.at_level(logging.WARNING):
        assert state_for_rank(saved, 0, world_size=1) is states[0]
    assert "dropped" in caplog.text


class Noise(Dataset):
    """Items drawn from the worker's global torch generator: what worker seeds decide."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> float:
        return torch.rand(()).item()


@pytest.mark.parametrize("persistent", [False, True], ids=["per-epoch-workers", "persistent-workers"])
def test_a_resumed_training_loader_gives_workers_the_straight_runs_seeds(persistent: bool) -> None:
    def loader(epoch: int) -> SeededLoader:
        sampler = ResumableSampler(16, seed=0)
        sampler.set_epoch(epoch)
        return SeededLoader(Noise(), seed=7, rank=1, sampler=sampler, batch_size=4, num_workers=2,
                            persistent_workers=persistent, worker_init_fn=partial(pl_worker_init_function, rank=1))

    straight = loader(0)
    torch.manual_seed(0)
    global_before = torch.get_rng_state()
    epochs = []
    for epoch in range(2):
        straight.sampler.set_epoch(epoch)
        epochs.append([b.tolist() for b in straight])
    assert torch.equal(torch.get_rng_state(), global_before)  # iterators never draw from the global stream
    assert epochs[0] != epochs[1]
    # A run resumed in epoch 1 builds a fresh loader there: its workers start where the straight run's did.
    resumed = [b.tolist() for b in loader(1)]
    assert resumed == (epochs[0] if persistent else epochs[1])
