"""The text DataModule: corpus -> tokenizer -> packed windows -> resumable micro-batches."""

import hashlib
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from jsonargparse import lazy_instance
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from constellation_kit.data.batching import micro_batch_size
from constellation_kit.data.cache import default_cache_dir, exclusive, write_atomically
from constellation_kit.data.packing import PackedDataset, pack_documents
from constellation_kit.data.sampler import ResumableSampler
from constellation_kit.data.seeded_loader import SeededLoader
from constellation_kit.data.sources import DocumentSource, PythonStdlibSource
from constellation_kit.data.splits import is_validation
from constellation_kit.data.tokenizer import END_OF_TEXT, ByteLevelBPE
from constellation_kit.errors import ConfigError

log = logging.getLogger(__name__)


class TextDataModule(L.LightningDataModule):
    """Packed next-token-prediction batches from a document source.

    Each batch is a dict of (B, T) int64 tensors, B the micro-batch per device, T ``seq_len``:
    ``tokens``, ``targets`` (-100 where the next token opens another document), ``document_ids``.

    Documents are split into train and validation by a seeded hash of their id, so no document is
    in both. The tokenizer is trained on the training split only. Tokenised splits are cached
    under ``cache_dir``. The position in the training data is saved in checkpoints, so a resumed
    run continues with the batch it would have seen next.

    Args:
        source: where the documents come from.
        tokenizer: how text becomes token ids (trained on first use, then cached).
        seq_len: tokens per training window.
        global_batch_size: sequences per optimizer step, summed over gradient accumulation and
            devices; the per-device micro-batch is derived from it.
        val_fraction: fraction of documents held out for validation.
        seed: decides the split and the shuffling order.
        num_workers: DataLoader worker processes (windows are pre-packed arrays, so 0 is fine on a CPU).
        cache_dir: where tokenizers and tokenised corpora are cached; ``None`` means
            ``$CONSTELLATION_KIT_CACHE`` or ``~/.cache/constellation-kit``.
    """

    def __init__(
        self,
        source: DocumentSource = lazy_instance(PythonStdlibSource),
        tokenizer: ByteLevelBPE = lazy_instance(ByteLevelBPE),
        seq_len: int = 256,
        global_batch_size: int = 32,
        val_fraction: float = 0.05,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction} must be strictly between 0 and 1")
        if seq_len < 2:
            raise ConfigError(f"seq_len={seq_len} must be at least 2")
        self.source = source
        self.tokenizer_spec = tokenizer
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._tokenizer: Tokenizer | None = None
        self._fingerprint: str | None = None
        self.train_dataset: PackedDataset | None = None
        self.val_dataset: PackedDataset | None = None
        self._train_sampler: ResumableSampler | None = None
        # Resume bookkeeping: global samples of the current epoch that reached training_step.
        self._epoch = 0
        self._samples_in_epoch = 0
        self._resume_from: dict[str, int] | None = None
        self.allow_data_mismatch = False
        """Resume even when the checkpoint's data fingerprint differs (the CLI's ``--resume_data_mismatch ok``)."""

    # -- tokenizer ---------------------------------------------------------------------------

    def _train_texts(self):
        return (d.text for d in self.source.documents() if not is_validation(d.id, self.seed, self.val_fraction))

    @property
    def source_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.source.fingerprint()
        return self._fingerprint

    @property
    def tokenizer(self) -> Tokenizer:
        """The trained tokenizer (trained on the training split the first time, then cached)."""
        if self._tokenizer is None:
            fingerprint = f"{self.source_fingerprint}|seed={self.seed}|val={self.val_fraction}"
            self._tokenizer = self.tokenizer_spec.load_or_train(self._train_texts, fingerprint, self.cache_dir)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the tokenizer; the CLI links it into the model."""
        return self.tokenizer.get_vocab_size()

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.token_to_id(END_OF_TEXT)
        if eos is None:
            raise ConfigError(f"the tokenizer has no {END_OF_TEXT!r} token: add it to its special_tokens")
        return eos

    # -- tokenised splits --------------------------------------------------------------------

    def _split_cache_path(self) -> Path:
        tokenizer_hash = hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()[:12]
        key = f"{self.source_fingerprint}-{tokenizer_hash}-s{self.seed}-v{self.val_fraction}"
        return self.cache_dir / "tokens" / f"{key}.npz"

    def prepare_data(self) -> None:
        """Train the tokenizer and tokenise both splits once, into the cache.

        Lightning calls this on local rank 0 of each node while the other ranks wait at a barrier;
        the cache lock makes it safe also when every rank calls it at once (a DataModule used
        outside a Trainer, or ranks started by torchrun that ask for the vocabulary first).
        """
        path = self._split_cache_path()
        if path.is_file():
            return
        with exclusive(path.with_suffix(".lock"), f"the tokenised corpus {path.name}"):
            if not path.is_file():  # tokenised by another process while this one waited
                self._tokenise(path)

    def _tokenise(self, path: Path) -> None:
        log.info("Tokenising the corpus into %s", path)
        splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        docs = list(self.source.documents())
        encoded = self.tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False)
        dtype = np.uint16 if self.vocab_size <= np.iinfo(np.uint16).max else np.int32
        for doc, enc in zip(docs, encoded):
            split = "val" if is_validation(doc.id, self.seed, self.val_fraction) else "train"
            splits[split].append(np.asarray(enc.ids, dtype=dtype))
        arrays = {}
        for split, token_lists in splits.items():
            if not token_lists:
                raise ConfigError(
                    f"the {split} split is empty ({len(docs)} documents, val_fraction={self.val_fraction}): "
                    "use more documents or a val_fraction that leaves both splits some"
                )
            arrays[f"{split}_tokens"] = np.concatenate(token_lists)
            arrays[f"{split}_lengths"] = np.array([len(t) for t in token_lists], dtype=np.int64)
        # A property of the corpus, kept with its tokens: a warm cache never reads the text again.
        arrays["non_utf8_documents"] = np.array(len(getattr(self.source, "non_utf8_ids", ())), dtype=np.int64)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        write_atomically(path, write)

    def _load_split(self, split: str) -> PackedDataset:
        with np.load(self._split_cache_path()) as arrays:
            tokens, lengths = arrays[f"{split}_tokens"], arrays[f"{split}_lengths"]
        documents = np.split(tokens, np.cumsum(lengths)[:-1])
        try:
            return PackedDataset(pack_documents(documents, self.seq_len, self.eos_id))
        except ValueError as error:
            raise ConfigError(f"the {split} split is too small: {error}. Use more documents or a shorter seq_len") from error

    def _log_data_counts(self, metrics: dict[str, float]) -> None:
        """Send counts about the data (skipped items, replaced bytes) to the run's loggers at step 0.

        Without a trainer or logger (a DataModule used on its own) there is nowhere to send them.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return
        for logger in trainer.loggers:  # rank-zero only inside Lightning's loggers
            logger.log_metrics(metrics, step=0)

    def _non_utf8_metrics(self, count: int) -> dict[str, float]:
        """Warn about ``count`` documents whose bad bytes were replaced; their metric for the loggers."""
        if count:
            log.warning(
                "%d documents held bytes that are not UTF-8; they are kept with those bytes replaced by U+FFFD "
                "(data/non_utf8_documents)", count,
            )
        return {"data/non_utf8_documents": float(count)}

    def setup(self, stage: str) -> None:
        if not self._split_cache_path().is_file():
            self.prepare_data()  # direct use outside a Trainer, or a node without a shared cache
        if self.train_dataset is None and self.val_dataset is None:
            with np.load(self._split_cache_path()) as arrays:
                count = int(arrays["non_utf8_documents"]) if "non_utf8_documents" in arrays else 0
            self._log_data_counts(self._non_utf8_metrics(count))
        if stage == "fit" and self.train_dataset is None:
            self.train_dataset = self._load_split("train")
        if stage in ("fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._load_split("val")
        if stage in ("test", "predict"):
            # The built-in corpus has no separate test split; held-out documents serve both.
            self.val_dataset = self.val_dataset or self._load_split("val")

    # -- loaders -----------------------------------------------------------------------------

    @property
    def micro_batch_size(self) -> int:
        trainer = self.trainer
        accumulation = trainer.accumulate_grad_batches if trainer else 1
        world_size = trainer.world_size if trainer else 1
        return micro_batch_size(self.global_batch_size, accumulation, world_size)

    def _rank_and_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

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

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _collate_fn(self):
        """How items become a batch; ``None`` is PyTorch's default stacking. Subclasses with media override it."""
        return None

    def _loader(self, dataset, sampler: ResumableSampler, drop_last: bool, seeded: bool = False) -> DataLoader:
        # seeded (training): worker seeds from (seed, rank, epoch), so a resume gets the straight run's.
        kwargs = {"seed": self.seed, "rank": self._rank_and_world()[0]} if seeded else {}
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

    # -- resume ------------------------------------------------------------------------------

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called once per batch that training actually consumes (after the loader's prefetch),
        # which is what a resume must skip: counting in the sampler would count prefetched ones.
        trainer = self.trainer
        if trainer is not None and trainer.training:
            if trainer.current_epoch != self._epoch:
                self._epoch, self._samples_in_epoch = trainer.current_epoch, 0
            self._samples_in_epoch += self.micro_batch_size * trainer.world_size
        return batch

    def data_fingerprint(self) -> dict[str, Any]:
        """What the data position in a checkpoint means: resuming with any of it changed would
        continue at the same sample count in another stream. Values are plain and short (the
        error message names each that changed)."""
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "val_fraction": self.val_fraction,
            "source": self.source_fingerprint,
        }

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
