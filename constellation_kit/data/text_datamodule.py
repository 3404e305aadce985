"""The text DataModule: corpus -> tokenizer -> packed windows -> resumable micro-batches."""

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from constellation_kit.data.cache import default_cache_dir, exclusive, write_atomically
from constellation_kit.data.datamodule import SampledDataModule, check_data_fingerprint  # noqa: F401 (re-exported)
from constellation_kit.data.packing import PackedDataset, pack_documents
from constellation_kit.data.sources import DocumentSource, PythonStdlibSource
from constellation_kit.data.tokenizer import END_OF_TEXT, ByteLevelBPE
from constellation_kit.errors import ConfigError
from constellation_kit.lazy_default import lazy_default

log = logging.getLogger(__name__)


class TextDataModule(SampledDataModule):
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
        source: DocumentSource = lazy_default(PythonStdlibSource),
        tokenizer: ByteLevelBPE = lazy_default(ByteLevelBPE),
        seq_len: int = 256,
        global_batch_size: int = 32,
        val_fraction: float = 0.05,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(global_batch_size, val_fraction, seed, num_workers)
        if seq_len < 2:
            raise ConfigError(f"seq_len={seq_len} must be at least 2")
        self.source = source
        self.tokenizer_spec = tokenizer
        self.seq_len = seq_len
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._tokenizer: Tokenizer | None = None
        self._fingerprint: str | None = None
        self.train_dataset: PackedDataset | None = None
        self.val_dataset: PackedDataset | None = None

    # -- tokenizer ---------------------------------------------------------------------------

    def _train_texts(self):
        return (d.text for d in self.source.documents() if self.split_of(d.id) == "train")

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
            splits[self.split_of(doc.id)].append(np.asarray(enc.ids, dtype=dtype))
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

    # -- resume ------------------------------------------------------------------------------

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
