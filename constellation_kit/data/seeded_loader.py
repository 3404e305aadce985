"""A training DataLoader whose workers' seeds are a function of (seed, rank, epoch), not of the global RNG."""

import hashlib
from typing import Any

import torch
from torch.utils.data import DataLoader


def worker_base_seed(seed: int, rank: int, epoch: int) -> int:
    """The base seed of a rank's loader workers in ``epoch`` (worker ``i`` starts from ``base + i``)."""
    digest = hashlib.blake2b(f"workers|{seed}|{rank}|{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # a non-negative int64, as torch's own draw is


def own_generator(seed: int) -> torch.Generator:
    """A generator for a loader that must not draw from the global torch stream (validation loaders)."""
    return torch.Generator().manual_seed(seed)


class SeededLoader(DataLoader):
    """A DataLoader that seeds its iterator from ``(seed, rank, epoch)``.

    PyTorch draws each new iterator's worker base seed from the global torch generator. That draw
    would make a resumed run's workers (and, through the draw itself, every dropout mask after it)
    differ from the straight run's: the resumed run creates an iterator where the straight run did
    not. Here the draw comes from the loader's own generator, re-seeded at each iterator from the
    data seed, the rank and the sampler's epoch, so a resume at any step gets the straight run's
    worker seeds (Lightning's ``seed_everything(workers=True)`` worker_init_fn derives each
    worker's torch, numpy and Python seeds from that base) and the global stream is never touched.
    With persistent workers the iterator (and its workers) is made once per process, so the epoch
    is left out: the resumed workers start from the seed the straight run's started from.

    Args:
        seed: the data seed.
        rank: this process's global rank.
        (the rest as :class:`torch.utils.data.DataLoader`; ``generator`` is the loader's own)
    """

    def __init__(self, *args: Any, seed: int, rank: int, **kwargs: Any) -> None:
        super().__init__(*args, generator=torch.Generator(), **kwargs)
        self.seed = seed
        self.rank = rank

    def _get_iterator(self):
        epoch = 0 if self.persistent_workers else getattr(self.sampler, "epoch", 0)
        self.generator.manual_seed(worker_base_seed(self.seed, self.rank, epoch))
        return super()._get_iterator()
