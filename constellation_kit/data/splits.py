"""Train/validation splits: by a seeded hash of each document's id, or by whole chunks of a sharded source."""

import hashlib

import numpy as np

from constellation_kit.errors import ConfigError


def is_validation(document_id: str, seed: int, fraction: float) -> bool:
    """Whether a document is held out for validation.

    Hashing the id (not drawing from an RNG in iteration order) makes the split independent of
    how many documents there are and in what order they arrive: adding files to a corpus never
    moves an existing document from train to validation or back.
    """
    digest = hashlib.sha256(f"{seed}:{document_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def validation_chunks(source: str, num_chunks: int, seed: int, fraction: float) -> set[int]:
    """The chunks of a sharded source held out for validation: ``round(fraction x chunks)`` of them, at least one.

    Whole chunks, not items: validation then reads only its own chunks, where an item-level split
    of a petabyte corpus would download every chunk to find a thousandth of it. The chunks are the
    first of a permutation seeded by ``seed`` and the source's name, so the split never depends on
    the loader grid, and each document (one item, in one chunk) is on one side only.
    """
    if num_chunks < 2:
        raise ConfigError(
            f"source {source!r} has {num_chunks} chunk(s) and too few items to hold any out for validation: "
            "add data"
        )
    count = min(num_chunks - 1, max(1, round(fraction * num_chunks)))
    key = int.from_bytes(hashlib.sha256(f"{seed}:{source}".encode()).digest()[:8], "big")
    return {int(c) for c in np.random.default_rng(key).permutation(num_chunks)[:count]}


def split_chunks(
    source: str, bounds: list[tuple[int, int]], seed: int, fraction: float
) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    """A sharded source's ``(train, validation)`` item ranges by chunk, ``{chunk: (first, end)}``.

    Whole chunks (:func:`validation_chunks`); a source of a single chunk (a small curated corpus)
    holds out the last ``round(fraction x items)`` items of it instead, at least one.
    """
    if len(bounds) == 1 and bounds[0][1] - bounds[0][0] >= 2:
        first, end = bounds[0]
        held = min(end - first - 1, max(1, round(fraction * (end - first))))
        return {0: (first, end - held)}, {0: (end - held, end)}
    held_out = validation_chunks(source, len(bounds), seed, fraction)
    train = {c: b for c, b in enumerate(bounds) if c not in held_out}
    return train, {c: b for c, b in enumerate(bounds) if c in held_out}
