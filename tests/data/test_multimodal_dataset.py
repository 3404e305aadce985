"""The per-item seeding behind reproducible augmentation (:func:`constellation_kit.data.multimodal_dataset.seeded`)."""

import random

import pytest
import torch

from constellation_kit.data.multimodal_dataset import seeded


def test_seeded_draws_repeat_for_a_key_and_differ_between_keys() -> None:
    def draws(*key: int) -> tuple[float, torch.Tensor]:
        with seeded(*key):
            return random.random(), torch.rand(3)

    first, again, other = draws(1234, 0, 7), draws(1234, 0, 7), draws(1234, 1, 7)
    assert first[0] == again[0] and torch.equal(first[1], again[1])
    assert first[0] != other[0] and not torch.equal(first[1], other[1])


def test_seeded_leaves_the_callers_generators_where_they_were() -> None:
    random.seed(5)
    torch.manual_seed(5)
    expected = random.random(), torch.rand(3)
    random.seed(5)
    torch.manual_seed(5)
    with seeded(1, 2, 3):
        random.random(), torch.rand(10)
    assert random.random() == expected[0]
    assert torch.equal(torch.rand(3), expected[1])


def test_seeded_touches_no_accelerator_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    # fork_rng(devices=[]) restores the CPU generator only: seeding a GPU's here would leave it
    # changed after every item (dropout on the GPU then depends on what the loader loaded), and on a
    # CUDA build torch.manual_seed queues a lazy seed call with its captured stack each time.
    def refuse(seed: int) -> None:
        raise AssertionError("an accelerator generator was seeded for a CPU augmentation")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    with seeded(1234, 0, 1):
        torch.rand(1)
