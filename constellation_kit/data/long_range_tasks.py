"""Synthetic long-range tasks: multi-query associative recall and passkey retrieval.

Each task generates ``(inputs, targets)`` arrays of shape (N, T): ``targets`` holds
:data:`IGNORE_INDEX` everywhere except where the answer is to be predicted, so the loss and a
token accuracy over non-ignored targets measure exactly the task.
"""

from abc import ABC, abstractmethod

import numpy as np

from constellation_kit.data.packing import IGNORE_INDEX
from constellation_kit.errors import ConfigError


class SyntheticTask(ABC):
    """A generator of (inputs, targets) int64 arrays (N, T) over a fixed vocabulary."""

    vocab_size: int

    @abstractmethod
    def generate(self, num_examples: int, seq_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``num_examples`` sequences of ``seq_len`` tokens and their targets, reproducible from ``seed``."""


def _sample_without_replacement(rng: np.random.Generator, log_p: np.ndarray, n: int, k: int) -> np.ndarray:
    """(n, k) draws without replacement from ``len(log_p)`` items weighted by ``exp(log_p)``.

    Gumbel-top-k (Kool et al. 2019, https://arxiv.org/abs/1903.06059): the k largest of
    ``log_p + Gumbel noise`` are distributed as k successive weighted draws without replacement,
    i.e. as ``np.random.choice(replace=False, p=...)`` row by row, but vectorised.
    """
    keys = log_p[None, :] + rng.gumbel(size=(n, len(log_p)))
    return np.argsort(-keys, axis=1)[:, :k]


class MultiQueryAssociativeRecall(SyntheticTask):
    """MQAR (Arora et al. 2023, "Zoology", https://arxiv.org/abs/2312.04927), Zoology's generator.

    A sequence opens with ``num_kv_pairs`` key-value pairs (keys from ``1 .. V/2 - 1``, values from
    ``V/2 .. V - 1``, distinct within a sequence), then every key is queried once, at an even offset
    ``2 * gap`` into the rest, gaps drawn without replacement with ``p(gap) ∝ power_a * gap^(power_a - 1)``
    (short gaps likelier). The target at a queried key is its value; everything else is ignored.
    With ``random_non_queries``, filler tokens are uniform over the vocabulary (else 0).

    Args:
        vocab_size: V; keys take the lower half, values the upper half.
        num_kv_pairs: key-value pairs per sequence; ``4 * num_kv_pairs <= seq_len``.
        power_a: exponent of the power law over query gaps (Zoology's default 0.01).
        random_non_queries: fill non-query positions with random tokens instead of 0.
    """

    def __init__(
        self, vocab_size: int = 8192, num_kv_pairs: int = 8, power_a: float = 0.01, random_non_queries: bool = True
    ) -> None:
        if vocab_size < 2 * num_kv_pairs + 2:
            raise ConfigError(f"MQAR vocab_size={vocab_size} is too small for num_kv_pairs={num_kv_pairs} distinct keys and values")
        self.vocab_size = vocab_size
        self.num_kv_pairs = num_kv_pairs
        self.power_a = power_a
        self.random_non_queries = random_non_queries

    def generate(self, num_examples: int, seq_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        n, k = num_examples, self.num_kv_pairs
        if seq_len % 2 or 4 * k > seq_len:
            raise ConfigError(f"MQAR needs an even seq_len >= 4 * num_kv_pairs = {4 * k}, got seq_len={seq_len}")
        rng = np.random.default_rng(seed)
        context = 2 * k
        half = self.vocab_size // 2
        keys = _sample_without_replacement(rng, np.zeros(half - 1), n, k) + 1  # (N, k) in 1 .. V/2-1
        values = _sample_without_replacement(rng, np.zeros(self.vocab_size - half), n, k) + half  # (N, k)
        kvs = np.zeros((n, context), dtype=np.int64)
        kvs[:, 0::2], kvs[:, 1::2] = keys, values
        space = (seq_len - context) // 2
        gap = np.arange(1, space + 1, dtype=np.float64)
        p = self.power_a * gap ** (self.power_a - 1)
        gaps = _sample_without_replacement(rng, np.log(p / p.sum()), n, k)  # (N, k) in 0 .. space-1
        queries = np.zeros((n, seq_len - context + 1), dtype=np.int64)
        np.put_along_axis(queries, gaps * 2, keys, axis=1)
        examples = np.concatenate([kvs, queries], axis=1)  # (N, T + 1)
        labels = np.full((n, seq_len + 1), IGNORE_INDEX, dtype=np.int64)
        np.put_along_axis(labels, gaps * 2 + context + 1, values, axis=1)
        inputs, targets = examples[:, :-1], labels[:, 1:]  # the value is predicted at its key's query
        if self.random_non_queries:
            filler = inputs == 0
            inputs[filler] = rng.integers(0, self.vocab_size, size=int(filler.sum()))
        return inputs, targets


class PasskeyRetrieval(SyntheticTask):
    """Passkey retrieval (Mohtashami & Jaggi 2023, https://arxiv.org/abs/2305.16300), in tokens.

    A repeated filler phrase, with ``[MARK d1 .. dk MARK]`` (a random ``passkey_digits``-digit key)
    inserted at a uniformly random depth, and the sequence ending ``[QUERY d1 .. dk]``: the targets
    are the digits after QUERY, everything else ignored. Tokens: digits 0-9, MARK 10, QUERY 11,
    filler from 12 up.

    Args:
        vocab_size: at least 13 (digits, two markers, one filler token).
        passkey_digits: k, the length of the key.
        filler_period: length of the repeated filler phrase (the original repeats one sentence).
    """

    MARK, QUERY, FIRST_FILLER = 10, 11, 12

    def __init__(self, vocab_size: int = 64, passkey_digits: int = 5, filler_period: int = 16) -> None:
        if vocab_size <= self.FIRST_FILLER:
            raise ConfigError(f"passkey vocab_size={vocab_size} must exceed {self.FIRST_FILLER} (digits and markers)")
        self.vocab_size = vocab_size
        self.passkey_digits = passkey_digits
        self.filler_period = filler_period

    def generate(self, num_examples: int, seq_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        k = self.passkey_digits
        if seq_len < 2 * k + 4:
            raise ConfigError(f"passkey seq_len={seq_len} is too short for a {k}-digit key (needs >= {2 * k + 4})")
        rng = np.random.default_rng(seed)
        phrase = rng.integers(self.FIRST_FILLER, self.vocab_size, size=self.filler_period)
        sequences = np.resize(phrase, (num_examples, seq_len + 1)).astype(np.int64)  # (N, T + 1)
        digits = rng.integers(0, 10, size=(num_examples, k))
        tail = seq_len + 1 - (k + 1)  # the query block starts here
        depth = rng.integers(0, tail - (k + 2) + 1, size=num_examples)  # the key block fits before it
        rows = np.arange(num_examples)[:, None]
        block = np.concatenate([np.full((num_examples, 1), self.MARK), digits, np.full((num_examples, 1), self.MARK)], 1)
        sequences[rows, depth[:, None] + np.arange(k + 2)] = block
        sequences[:, tail] = self.QUERY
        sequences[:, tail + 1 :] = digits
        targets = np.full((num_examples, seq_len), IGNORE_INDEX, dtype=np.int64)
        targets[:, tail:] = digits  # input position tail (QUERY) predicts d1, and so on
        return sequences[:, :-1], targets
