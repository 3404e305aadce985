"""``constellation-kit tokenizer train``: a byte-level BPE with the model's special tokens, from raw files."""

from collections.abc import Iterator
from typing import Literal

from jsonargparse import ArgumentParser, Namespace

from constellation_kit.cli import Command, ConstellationCLI, register_command
from constellation_kit.data.tokenizer import SPECIAL_TOKENS
from constellation_kit.extras import help_suffix, missing_modules, require_extra

# Files are read as curate reads them, with datatrove (the 'curate' extra): without it the command
# is still listed, and says how to install it.
INSTALLED = not missing_modules("curate")
if INSTALLED:
    from constellation_kit.data.curation.inputs import list_input_files
    from constellation_kit.data.curation.reader import CurationReader
    from constellation_kit.data.curation.tokenizer import train_tokenizer


def add_arguments(parser: ArgumentParser) -> None:
    # An action word rather than nested subcommands: one level of subcommands keeps the kit's parser simple.
    parser.add_argument("action", type=Literal["train"], help="train: train a byte-level BPE tokenizer")
    parser.add_argument("--input", type=str, nargs="+", required=True, help="files or folders, read as curate reads them")
    parser.add_argument("--vocab_size", type=int, required=True,
                        help="tokens in the vocabulary, including the 256 byte symbols and the special tokens")
    parser.add_argument("--output", type=str, required=True, help="the tokenizer.json to write")
    parser.add_argument("--special_tokens", type=list[str], default=SPECIAL_TOKENS,
                        help="tokens BPE never splits, ids 0.. in order; the first is the document separator")
    parser.add_argument("--text_keys", type=list[str], default=["text", "caption"],
                        help="the JSONL/Parquet fields holding the text")


def texts(files: list[str], text_keys: list[str]) -> Iterator[str]:
    """The documents of ``files`` as curate's reader sees them (bad input skipped)."""
    yield from (document.text for document in CurationReader(files, tuple(text_keys)).run())


def run(config: Namespace, cli: ConstellationCLI) -> None:
    require_extra("curate", "constellation-kit tokenizer train")
    options = config
    files = list_input_files(options.input)
    tokenizer = train_tokenizer(texts(files, options.text_keys), options.vocab_size, options.output, options.special_tokens)
    print(f"tokenizer: {tokenizer.get_vocab_size()} tokens, special "
          + ", ".join(f"{t}={tokenizer.token_to_id(t)}" for t in options.special_tokens) + f" -> {options.output}")


register_command(Command(
    name="tokenizer",
    help="Tokenizer tools: `tokenizer train` trains the byte-level BPE the recipes use."
    + help_suffix("curate"),
    add_arguments=add_arguments,
    run=run,
))
