"""The one DataModule base of the kit, and the resumable sampled loaders the in-memory modules share.

:class:`DataModule` is what every data module (text, synthetic, multimodal, streaming) has in
common: a global batch split into micro-batches, the rank's place, the train/validation split
(:meth:`DataModule.split_of`, the only place it is decided for documents), the fingerprint a
checkpoint's data position is checked against, and counts sent to the run's loggers.
:class:`SampledDataModule` adds what the in-memory (map-style) modules share: a seeded, resumable
sampler, loaders whose worker seeds do not touch the global RNG, and a data position counted in
global samples.
"""

import logging
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from constellation_kit.data.batching import micro_batch_size
from constellation_kit.data.sampler import ResumableSampler
from constellation_kit.data.seeded_loader import SeededLoader, own_generator
from constellation_kit.data.splits import is_validation
from constellation_kit.errors import ConfigError

log = logging.getLogger(__name__)


class DataModule(L.LightningDataModule):
    """What every data module of the kit shares (see the module docstring).

    Args:
        global_batch_size: sequences per optimizer step, summed over gradient accumulation and
            devices; the per-device micro-batch is derived from it.
        val_fraction: share held out for validation (``None``: the module splits otherwise).
        seed: decides the split and the order.
        num_workers: DataLoader worker processes per rank.
    """

    def __init__(self, global_batch_size: int, val_fraction: float | None, seed: int, num_workers: int) -> None:
        super().__init__()
        if val_fraction is not None and not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction} must be strictly between 0 and 1")
        self.global_batch_size = global_batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.allow_data_mismatch = False
        """Resume even when the checkpoint's data fingerprint differs (the CLI's ``--resume_data_mismatch ok``)."""

    def split_of(self, document_id: str) -> str:
        """``"val"`` or ``"train"``: the train/validation split of every document-level module."""
        return "val" if is_validation(document_id, self.seed, self.val_fraction) else "train"

    @property
    def micro_batch_size(self) -> int:
        trainer = self.trainer
        accumulation = trainer.accumulate_grad_batches if trainer else 1
        world_size = trainer.world_size if trainer else 1
        return micro_batch_size(self.global_batch_size, accumulation, world_size)

    def _rank_and_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def data_fingerprint(self) -> dict[str, Any]:
        """What the data position in a checkpoint means: resuming with any of it changed would
        continue at the same position in another stream. Values are plain and short (the error
        message names each that changed)."""
        raise NotImplementedError

    def _log_data_counts(self, metrics: dict[str, float]) -> None:
        """Send counts about the data (skipped items, replaced bytes) to the run's loggers at step 0.

        Without a trainer or logger (a DataModule used on its own) there is nowhere to send them.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return
        for logger in trainer.loggers:  # rank-zero only inside Lightning's loggers
            logger.log_metrics(metrics, step=0)

    def test_dataloader(self) -> DataLoader:
        # No separate test split: held-out data serves validation and test alike.
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class SampledDataModule(DataModule):
    """A :class:`DataModule` over map-style ``train_dataset``/``val_dataset``, resumable mid-epoch.

    The training order is a :class:`~constellation_kit.data.sampler.ResumableSampler`'s; the
    checkpointed position is the count of global samples training consumed in the epoch, so a
    run resumes at another world size with the same global batch.
    """

    def __init__(self, global_batch_size: int, val_fraction: float | None, seed: int, num_workers: int) -> None:
        super().__init__(global_batch_size, val_fraction, seed, num_workers)
        self.train_dataset = None
        self.val_dataset = None
        self._train_sampler: ResumableSampler | None = None
        # Resume bookkeeping: global samples of the current epoch that reached training_step.
        self._epoch = 0
        self._samples_in_epoch = 0
        self._resume_from: dict[str, int] | None = None

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world()
        self._train_sampler = ResumableSampler(len(self.train_dataset), seed=self.seed, rank=rank, world_size=world_size)
        if self._resume_from is not None:
            # The epoch now, not when Lightning next sets it: the first iterator (and the copies of
            # the sampler that worker processes take) is created before Lightning's set_epoch call.
            self._train_sampler.set_epoch(self._resume_from["epoch"])
            self._train_sampler.skip(self._resume_from["epoch"], self._resume_from["samples"])
            self._resume_from = None
        return self._loader(self.train_dataset, self._train_sampler, drop_last=True, seeded=True)

    def val_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world()
        sampler = ResumableSampler(len(self.val_dataset), shuffle=False, rank=rank, world_size=world_size)
        return self._loader(self.val_dataset, sampler, drop_last=False)

    def _collate_fn(self):
        """How items become a batch; ``None`` is PyTorch's default stacking. Modules with media override it."""
        return None

    def _loader(self, dataset, sampler: ResumableSampler, drop_last: bool, seeded: bool = False) -> DataLoader:
        # seeded (training): worker seeds from (seed, rank, epoch), so a resume gets the straight run's.
        # Otherwise (validation) the loader's own generator: a plain DataLoader draws each iterator's worker
        # seed from the global torch generator, so every validation would move the dropout masks after it
        # and a run resumed past a validation it skips would leave the straight run's trajectory.
        if seeded:
            kwargs = {"seed": self.seed, "rank": self._rank_and_world()[0]}
        else:
            kwargs = {"generator": own_generator(self.seed)}
        return (SeededLoader if seeded else DataLoader)(
            dataset,
            batch_size=self.micro_batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self._collate_fn(),
            **kwargs,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called once per batch that training actually consumes (after the loader's prefetch),
        # which is what a resume must skip: counting in the sampler would count prefetched ones.
        trainer = self.trainer
        if trainer is not None and trainer.training:
            if trainer.current_epoch != self._epoch:
                self._epoch, self._samples_in_epoch = trainer.current_epoch, 0
            self._samples_in_epoch += self.micro_batch_size * trainer.world_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        # A global sample count, so a run can resume at another world size with the same global batch.
        return {"epoch": self._epoch, "samples": self._samples_in_epoch, "fingerprint": self.data_fingerprint()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_data_fingerprint(state_dict.get("fingerprint"), self.data_fingerprint(), self.allow_data_mismatch)
        self._epoch, self._samples_in_epoch = state_dict["epoch"], state_dict["samples"]
        self._resume_from = {"epoch": state_dict["epoch"], "samples": state_dict["samples"]}


def check_data_fingerprint(saved: dict[str, Any] | None, current: dict[str, Any], allow: bool) -> None:
    """Raise a :class:`ConfigError` naming every data setting that differs from the checkpoint's.

    ``allow`` (``--resume_data_mismatch ok``) turns the error into a warning. A checkpoint written
    before fingerprints were saved (``saved`` is ``None``) is not checked.
    """
    if saved is None:
        return
    changed = [f"{key} {saved.get(key)!r} -> {current.get(key)!r}" for key in sorted(set(saved) | set(current))
               if saved.get(key) != current.get(key)]
    if not changed:
        return
    what = ", ".join(changed)
    if allow:
        log.warning("resuming on changed data (%s), as --resume_data_mismatch ok allows: the data position is "
                    "kept as a count of samples, which now index another stream", what)
        return
    raise ConfigError(
        f"the checkpoint was trained on other data: {what}. Resume with the checkpoint's data settings, "
        "start a new run, or pass --resume_data_mismatch ok to continue on the new data"
    )
