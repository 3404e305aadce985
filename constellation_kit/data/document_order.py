"""Which documents of a source one loader worker reads, in what order, epoch after epoch.

Every loader worker of every rank is a *slot* (``rank * workers_per_rank + worker``). An epoch of a
source is a seeded permutation of its chunks, each chunk's items permuted in turn; the chunks are
dealt to the slots round-robin, so a slot reads whole chunks (one download each) and no two slots
read the same document. A source with fewer chunks than slots is dealt item by item instead
(small corpora: each slot then reads a stride of every chunk). The chunks given are one split's
(:func:`~constellation_kit.data.splits.split_chunks` decides which).

A slot's position in a source is ``(epoch, offset)``: the order is a pure function of the seed,
the source, the epoch and the slot grid, so that pair is all a checkpoint needs to continue.
"""

from collections.abc import Iterator
import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass
class Position:
    """Where a slot is in one source: ``offset`` documents into its share of ``epoch``."""

    epoch: int = 0
    offset: int = 0


class DocumentOrder:
    """One slot's sequence of ``(item index, chunk)`` in a source, from a :class:`Position`.

    Args:
        name: the source's name (seeds its shuffle).
        chunks: ``{chunk index: (first item, end)}`` of the chunks this split reads.
        slot, num_slots: this reader's place in the grid of ranks x loader workers.
        seed: shuffling seed.
        shuffle: ``False`` reads chunks and items in storage order (validation: the same every time).
    """

    def __init__(
        self, name: str, chunks: dict[int, tuple[int, int]], slot: int, num_slots: int, seed: int, shuffle: bool = True
    ) -> None:
        self.name, self.chunks, self.slot, self.num_slots = name, chunks, slot, num_slots
        self.seed, self.shuffle = seed, shuffle
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def _rng(self, *key: int) -> np.random.Generator:
        name = int.from_bytes(hashlib.blake2b(self.name.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng([self.seed, name, *key])

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This slot's ``(items, chunk of each item)`` for ``epoch``."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1], self._epoch_cache[2]
        order = sorted(self.chunks)
        if self.shuffle:
            order = [order[i] for i in self._rng(epoch).permutation(len(order))]
        by_chunk = len(order) >= self.num_slots
        mine = order[self.slot :: self.num_slots] if by_chunk else order
        items, owners = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for chunk in mine:
            first, end = self.chunks[chunk]
            indices = np.arange(first, end)
            if self.shuffle:
                indices = self._rng(epoch, chunk).permutation(indices)
            items.append(indices)
            owners.append(np.full(len(indices), chunk))
        items_array, owners_array = np.concatenate(items), np.concatenate(owners)
        if not by_chunk:
            items_array, owners_array = items_array[self.slot :: self.num_slots], owners_array[self.slot :: self.num_slots]
        self._epoch_cache = (epoch, items_array, owners_array)
        return items_array, owners_array

    def read_from(self, position: Position, endless: bool = True) -> Iterator[tuple[int, int, list[int] | None, bool]]:
        """Yield ``(item, chunk, upcoming chunks or None, last of the plan)`` from ``position``, advancing it.

        ``upcoming`` (the chunks still ahead in this epoch) comes with the first item read in each
        epoch, so the reader can download ahead. ``position`` is updated before each yield: it
        always names the next document. Stops after one epoch unless ``endless``, and when this
        slot has nothing to read (rather than spinning).
        """
        while True:
            items, owners = self.epoch_plan(position.epoch)
            if len(items) == 0:
                return
            start = position.offset
            for k in range(start, len(items)):
                upcoming = list(dict.fromkeys(owners[k:].tolist())) if k == start else None
                position.offset = k + 1
                yield int(items[k]), int(owners[k]), upcoming, k == len(items) - 1
            position.epoch, position.offset = position.epoch + 1, 0
            if not endless:
                return
