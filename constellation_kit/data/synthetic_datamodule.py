"""A DataModule over a synthetic task: generated once in memory, no tokenizer, no cache."""

import numpy as np
import torch
from torch.utils.data import Dataset

from constellation_kit.data.long_range_tasks import MultiQueryAssociativeRecall, SyntheticTask
from constellation_kit.data.datamodule import SampledDataModule
from constellation_kit.errors import ConfigError
from constellation_kit.lazy_default import lazy_default


class SyntheticDataset(Dataset):
    """(N, T) inputs and targets as items of (T,) int64 ``tokens``, ``targets``, ``document_ids`` (one document)."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        self.inputs, self.targets = torch.from_numpy(inputs), torch.from_numpy(targets)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        tokens = self.inputs[index]
        return {"tokens": tokens, "targets": self.targets[index], "document_ids": torch.zeros_like(tokens)}


class SyntheticDataModule(SampledDataModule):
    """Batches from a :class:`SyntheticTask` (MQAR, passkey), for training and for length generalisation.

    Same batch dict as :class:`TextDataModule`, the same micro-batching and resumable sampling
    (:class:`~constellation_kit.data.datamodule.SampledDataModule`); the data is
    generated from ``seed`` (training) and ``seed + 1`` (validation), so the splits never share a
    draw. ``val_seq_len`` evaluates at another length than training, e.g. twice it:
    ``constellation-kit validate ... --data.init_args.val_seq_len=512 --ckpt_path ...``.

    Args:
        task: the generator.
        seq_len: training sequence length.
        val_seq_len: validation/test sequence length; ``None`` means ``seq_len``.
        global_batch_size: sequences per optimizer step (over accumulation and devices).
        num_train_examples: training sequences (an epoch).
        num_val_examples: validation sequences.
        seed: decides the data and the shuffling order.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        task: SyntheticTask = lazy_default(MultiQueryAssociativeRecall),
        seq_len: int = 256,
        val_seq_len: int | None = None,
        global_batch_size: int = 32,
        num_train_examples: int = 20_000,
        num_val_examples: int = 512,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        # No val_fraction: the splits are separate draws (seed and seed + 1).
        super().__init__(global_batch_size, None, seed, num_workers)
        if num_train_examples < 1 or num_val_examples < 1:
            raise ConfigError(f"num_train_examples={num_train_examples} and num_val_examples={num_val_examples} must be positive")
        self.task = task
        self.seq_len = seq_len
        self.val_seq_len = val_seq_len or seq_len
        self.num_train_examples = num_train_examples
        self.num_val_examples = num_val_examples

    def data_fingerprint(self) -> dict[str, object]:
        """As :meth:`TextDataModule.data_fingerprint`: the task and its settings stand in for the source."""
        if hasattr(self.task, "_lazy_init"):  # jsonargparse's lazy_instance default: built on first use
            self.task._lazy_init()
        settings = {k: v for k, v in sorted(vars(self.task).items())
                    if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
        name = type(self.task).__name__.removeprefix("LazyInstance_")
        task = f"{name}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"
        return {"task": task, "seed": self.seed, "seq_len": self.seq_len, "global_batch_size": self.global_batch_size,
                "num_train_examples": self.num_train_examples}

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size

    def prepare_data(self) -> None:
        """Nothing to download or cache: the data is generated in :meth:`setup`."""

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_dataset is None:
            self.train_dataset = SyntheticDataset(*self.task.generate(self.num_train_examples, self.seq_len, self.seed))
        if self.val_dataset is None:
            self.val_dataset = SyntheticDataset(*self.task.generate(self.num_val_examples, self.val_seq_len, self.seed + 1))
