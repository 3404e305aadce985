"""A shuffling sampler that is deterministic per epoch, shards over ranks, and resumes mid-epoch."""

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Yields this rank's share of a seeded permutation of ``range(num_samples)``.

    The order depends only on ``(seed, epoch)``; each rank takes every ``world_size``-th index
    (the tail that does not divide evenly is dropped, so ranks stay in lock-step).
    :meth:`skip` makes the next pass over ``epoch`` start after the first ``n`` samples of the
    global order: that is how a run resumed mid-epoch sees exactly the data it had not yet seen,
    even at another world size (the global batch, not the per-rank one, is the invariant).
    ``len()`` stays the full per-rank epoch length so the trainer's batch counting agrees.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        # In shared memory: loader workers hold copies of the dataset, and through it of this sampler
        # (the media augmentation seeds read its epoch); persistent workers are started once, so a
        # plain int set by Lightning in the main process would never reach them after epoch 0.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._skip_epoch = -1
        self._skip = 0

    @property
    def epoch(self) -> int:
        """The epoch being iterated, the same in every loader worker."""
        return int(self._epoch)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def skip(self, epoch: int, n: int) -> None:
        """Drop the first ``n`` samples of the global order the next time ``epoch`` is iterated."""
        self._skip_epoch, self._skip = epoch, n

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        if self.epoch == self._skip_epoch:
            order = order[self._skip :]
            self._skip_epoch = -1
        usable = len(order) // self.world_size * self.world_size
        return iter(order[:usable][self.rank :: self.world_size].tolist())
