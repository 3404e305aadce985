"""Training the kit's byte-level BPE on a corpus, with the special tokens the model needs."""

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from tokenizers import Tokenizer

from constellation_kit.data.tokenizer import END_OF_TEXT, SPECIAL_TOKENS, ByteLevelBPE
from constellation_kit.errors import ConfigError


def train_tokenizer(texts: Iterable[str], vocab_size: int, output: str | Path,
                    special_tokens: list[str] | None = None) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts`` and save it to ``output`` (a ``tokenizer.json``).

    The settings are :class:`~constellation_kit.data.tokenizer.ByteLevelBPE`'s (the recipes' tokenizer),
    so a file trained here drops into a recipe's ``tokenizer.init_args.path``.
    """
    special = list(special_tokens or SPECIAL_TOKENS)
    if special[0] != END_OF_TEXT:
        raise ConfigError(f"special_tokens must start with {END_OF_TEXT} (the document separator), got {special}")
    bpe = ByteLevelBPE(vocab_size=vocab_size, special_tokens=special)  # checks vocab_size against the specials
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    return bpe._train(lambda: texts, output)


def check_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json``; it must hold the document separator."""
    if not Path(path).is_file():
        raise ConfigError(f"tokenizer {str(path)!r} does not exist: train one with `constellation-kit tokenizer train`")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception on a malformed file
        raise ConfigError(f"tokenizer {str(path)!r} is not a tokenizers JSON file ({error})") from None
    if tokenizer.token_to_id(END_OF_TEXT) is None:
        raise ConfigError(f"tokenizer {str(path)!r} has no {END_OF_TEXT} token: the packer needs it between documents")
    return tokenizer


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class TrainTokenizerStep(PipelineStep):
    """A curation stage (one task): train the BPE on the curated documents in ``folder`` (gzipped JSONL),
    save it to ``output``. Skipped when ``output`` exists (a rerun, or a tokenizer the user gave)."""

    name = "tokenizer"
    type = "🔢 - TOKENIZER"

    def __init__(self, folder: str, output: str, vocab_size: int) -> None:
        super().__init__()
        self.folder = folder
        self.output = output
        self.vocab_size = vocab_size

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if not Path(self.output).is_file():
            def texts() -> Iterator[str]:
                for path in sorted(Path(self.folder).glob("*.jsonl.gz")):
                    with gzip.open(path, "rt", encoding="utf-8") as lines:
                        for line in lines:
                            self.stat_update("documents")
                            yield json.loads(line)["text"]

            train_tokenizer(texts(), self.vocab_size, self.output)
        return
        yield  # a generator step with no output
