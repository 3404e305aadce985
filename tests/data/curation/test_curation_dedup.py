"""The LSH shape behind ``near_dedup.threshold``, and what exact deduplication compares."""

import itertools

import numpy as np
import pytest
from datatrove.data import Document

from constellation_kit.data.curation.exact_dedup import dedup_content
from constellation_kit.data.curation.media_check import MEDIA_HASH
from constellation_kit.data.curation.near_dedup import NearDedup, collision_probability, lsh_shape
from constellation_kit.errors import ConfigError


@pytest.mark.parametrize("threshold", [0.6, 0.7, 0.8, 0.9])
def test_lsh_shape_keeps_the_recall_promise_with_the_steepest_curve(threshold: float) -> None:
    bands, rows = lsh_shape(threshold, num_hashes=120, recall=0.95)
    assert bands * rows <= 120
    assert collision_probability(threshold, bands, rows) >= 0.95
    # Brute force over every shape in the budget: none with more rows per band keeps the promise.
    for r, b in itertools.product(range(rows + 1, 121), range(1, 121)):
        if b * r <= 120:
            assert collision_probability(threshold, b, r) < 0.95


def test_collision_probability_matches_a_simulation() -> None:
    # Simulate banded MinHash directly: per hash, the two documents agree with probability s.
    rng = np.random.default_rng(0)
    s, bands, rows = 0.8, 17, 7
    agree = rng.random((20000, bands, rows)) < s
    simulated = agree.all(axis=2).any(axis=1).mean()
    assert simulated == pytest.approx(collision_probability(s, bands, rows), abs=0.01)


def test_threshold_outside_zero_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        NearDedup(threshold=1.0)
    with pytest.raises(ConfigError, match="num_hashes"):
        NearDedup(threshold=0.5, num_hashes=2, recall=0.999)


def test_exact_dedup_compares_media_bytes_with_the_caption() -> None:
    text = Document(text="a red square", id="1")
    red = Document(text="a red square", id="2", metadata={"image": "/r.png", MEDIA_HASH: "aa"})
    blue = Document(text="a red square", id="3", metadata={"image": "/b.png", MEDIA_HASH: "bb"})
    red_again = Document(text="a red square", id="4", metadata={"image": "/copy.png", MEDIA_HASH: "aa"})
    assert len({dedup_content(d) for d in (text, red, blue)}) == 3
    assert dedup_content(red) == dedup_content(red_again)
