"""Weighted mixtures of sources: which source each next document is drawn from."""

import hashlib

import numpy as np


class Mixture:
    """Draw ``n`` of a slot picks source ``i`` with probability ``weights[i] / sum(weights)``.

    Each draw is a hash of ``(seed, slot, n)``, not a step of a stateful generator: a checkpoint
    only needs ``n``, and new weights in a resumed run apply from the next draw on while every
    source keeps its own position (nothing is re-read, nothing skipped). Shares hold per document
    drawn; a source of longer documents gets that much more of the tokens.
    """

    def __init__(self, weights: list[float], seed: int, slot: int) -> None:
        total = float(sum(weights))
        self.cumulative = np.cumsum(np.asarray(weights, dtype=np.float64) / total)
        self.seed, self.slot = seed, slot

    def source(self, n: int) -> int:
        if len(self.cumulative) == 1:
            return 0
        digest = hashlib.blake2b(f"{self.seed}|{self.slot}|{n}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "little") / 2**64
        return min(int(np.searchsorted(self.cumulative, u, side="right")), len(self.cumulative) - 1)
