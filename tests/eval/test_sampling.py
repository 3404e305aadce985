"""Greedy, temperature, top-k and top-p sampling, against brute-force filters written out token by token."""

import math

import pytest
import torch

from constellation_kit.errors import ConfigError
from constellation_kit.eval.sampling import Sampling, next_tokens, top_k_filter, top_p_filter


def brute_top_k(row: list[float], k: int) -> set[int]:
    """Token i stays when fewer than k tokens have a strictly larger logit (ties with the k-th all stay)."""
    return {i for i, x in enumerate(row) if sum(y > x for y in row) < k}


def brute_top_p(row: list[float], p: float) -> set[int]:
    """Token i stays when the tokens strictly more likely than it sum to less than p."""
    total = sum(math.exp(x) for x in row)
    probs = [math.exp(x) / total for x in row]
    return {i for i, q in enumerate(probs) if sum(r for r in probs if r > q) < p}


def kept(filtered: torch.Tensor) -> list[set[int]]:
    return [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in filtered]


@pytest.mark.parametrize("k", [1, 2, 5, 11, 40])
def test_top_k_keeps_exactly_the_k_largest_and_their_ties(k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    # Integers: many ties, including at the k-th place.
    logits = torch.randint(-4, 4, (16, 23), generator=generator).float()
    assert kept(top_k_filter(logits, k)) == [brute_top_k(row, k) for row in logits.tolist()]


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_top_p_keeps_exactly_the_nucleus(p: float) -> None:
    generator = torch.Generator().manual_seed(int(p * 1000))
    logits = torch.randn(32, 17, generator=generator, dtype=torch.float64).float() * 2
    got = kept(top_p_filter(logits, p))
    checked = 0
    for row, keep in zip(logits.tolist(), got):
        probs = torch.tensor(row).softmax(0).tolist()
        # Skip rows where a boundary sum lies within rounding of p: either answer would be right.
        if any(abs(sum(r for r in probs if r > q) - p) < 1e-5 for q in probs):
            continue
        assert keep == brute_top_p(row, p)
        checked += 1
    assert checked >= 28
    assert all(len(k) >= 1 for k in got)  # the most likely token always stays


def test_greedy_is_the_argmax_whatever_the_filters() -> None:
    logits = torch.randn(8, 50)
    assert torch.equal(next_tokens(logits, Sampling(top_k=3, top_p=0.2)), logits.argmax(-1))


def test_sampling_draws_from_the_tempered_filtered_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).expand(20000, 5)
    sampling = Sampling(temperature=0.7, top_k=4, top_p=0.95)
    draws = next_tokens(logits, sampling, torch.Generator().manual_seed(0))
    # Brute force: temper, keep the top 4, then the 0.95 nucleus of those, renormalise.
    tempered = [x / 0.7 for x in logits[0].tolist()]
    keep = brute_top_k(tempered, 4)
    sub = {i: math.exp(tempered[i]) for i in keep}
    nucleus = brute_top_p([tempered[i] if i in keep else -math.inf for i in range(5)], 0.95) & keep
    expected = torch.zeros(5)
    for i in nucleus:
        expected[i] = sub[i]
    expected /= expected.sum()
    observed = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert set(draws.unique().tolist()) == nucleus
    torch.testing.assert_close(observed, expected, atol=0.01, rtol=0)


def test_a_seeded_generator_reproduces_the_draws() -> None:
    logits = torch.randn(64, 30)
    sampling = Sampling(temperature=1.0, top_p=0.9)
    first = next_tokens(logits, sampling, torch.Generator().manual_seed(7))
    again = next_tokens(logits, sampling, torch.Generator().manual_seed(7))
    other = next_tokens(logits, sampling, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize(
    "settings, message",
    [({"temperature": -0.5}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")],
)
def test_bad_settings_are_named(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Sampling(**settings)
