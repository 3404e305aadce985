"""A byte-level BPE tokenizer, trained with Hugging Face ``tokenizers`` and cached on disk."""

import hashlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from constellation_kit.data.cache import exclusive, write_atomically
from constellation_kit.errors import ConfigError

log = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"
IMAGE_TOKEN = "<|image|>"
AUDIO_TOKEN = "<|audio|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [END_OF_TEXT, IMAGE_TOKEN, AUDIO_TOKEN, PAD_TOKEN]
"""Ids 0-3, in this order, of a tokenizer trained by ``constellation-kit tokenizer train`` or ``curate``.
The first three are the recipes' own list (``tiny.yaml``, ``xl.yaml``), so a trained tokenizer keeps the
ids those recipes already use; padding comes last, after them."""


class ByteLevelBPE:
    """Byte-level BPE (GPT-2 style): any byte string encodes, nothing is ever out of vocabulary.

    Trained on the training split of the corpus the first time it is asked for, then loaded from
    ``<cache_dir>/tokenizers/`` (keyed by the corpus fingerprint, size and special tokens).

    Args:
        vocab_size: target vocabulary including the 256 byte symbols and the special tokens.
        special_tokens: tokens never split by BPE; the first must be the end-of-text separator.
        path: a ready ``tokenizer.json`` to use instead of training one.
    """

    def __init__(
        self,
        vocab_size: int = 4096,
        special_tokens: list[str] | None = None,
        path: str | None = None,
    ) -> None:
        self.vocab_size = vocab_size
        self.special_tokens = special_tokens or [END_OF_TEXT]
        self.path = path
        if path is None and vocab_size < 256 + len(self.special_tokens):
            raise ConfigError(
                f"tokenizer vocab_size={vocab_size} is smaller than the 256 byte symbols plus "
                f"{len(self.special_tokens)} special tokens: raise it (4096 suits the tiny recipe)"
            )

    def load_or_train(self, texts: Callable[[], Iterable[str]], corpus_fingerprint: str, cache_dir: Path) -> Tokenizer:
        """Return the tokenizer, training it on ``texts()`` unless a cached one matches."""
        if self.path is not None:
            if not Path(self.path).is_file():
                raise ConfigError(f"tokenizer path {self.path!r} does not exist: point it at a tokenizer.json")
            return Tokenizer.from_file(self.path)
        key = hashlib.sha256(f"{corpus_fingerprint}|{self.vocab_size}|{self.special_tokens}".encode()).hexdigest()[:16]
        cached = cache_dir / "tokenizers" / f"bpe-{self.vocab_size}-{key}.json"
        if cached.is_file():
            return Tokenizer.from_file(str(cached))
        with exclusive(cached.with_suffix(".lock"), f"the tokenizer {cached.name}"):
            if cached.is_file():  # trained by another rank while this one waited
                return Tokenizer.from_file(str(cached))
            return self._train(texts, cached)

    def _train(self, texts: Callable[[], Iterable[str]], cached: Path) -> Tokenizer:
        log.info("Training a %d-token byte-level BPE tokenizer (cached at %s)", self.vocab_size, cached)
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.vocab_size,
            special_tokens=self.special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts(), trainer)
        write_atomically(cached, lambda tmp: tokenizer.save(str(tmp)))
        return tokenizer
