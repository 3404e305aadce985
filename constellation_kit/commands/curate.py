"""``constellation-kit curate``: raw files to deduplicated, filtered, tokenised shards (docs/curation.md)."""

import inspect
import json
import os

from jsonargparse import ArgumentParser, Namespace

from constellation_kit.cli import Command, ConstellationCLI, register_command
from constellation_kit.extras import help_suffix, missing_modules, require_extra

# datatrove is the 'curate' extra: without it the command is still listed, and says how to install it.
INSTALLED = not missing_modules("curate")
if INSTALLED:
    from constellation_kit.data.curation import Curation

    CURATION_FIELDS = [name for name in inspect.signature(Curation).parameters]


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--input", type=str, nargs="+", required=True,
                        help="files or folders: text, JSONL (text or multimodal manifest), Parquet")
    parser.add_argument("--output", type=str, required=True,
                        help="DIR: writes DIR/shards (litdata), DIR/tokenizer.json, DIR/report.json; DIR/work holds stage files")
    parser.add_argument("--tokenizer", type=str | None, default=None,
                        help="a tokenizer.json to tokenise with (default: train one on the curated text, vocab_size tokens)")
    parser.add_argument("--tracking_uri", type=str | None, default=None,
                        help="MLflow tracking URI to log the report to (default: MLFLOW_TRACKING_URI, if set)")
    parser.add_argument("--overwrite", type=bool, default=False,
                        help="delete a curation of other inputs or settings found in --output and start again")
    if INSTALLED:
        parser.add_class_arguments(Curation, None)


def build_curation(config: Namespace) -> "Curation":
    """Instantiate :class:`Curation` (its filters and dedup settings) from the parsed options."""
    parser = ArgumentParser()
    parser.add_class_arguments(Curation, "curation")
    parsed = parser.parse_object({"curation": {name: config[name] for name in CURATION_FIELDS if name in config}})
    return parser.instantiate(parsed).curation


def run(config: Namespace, cli: ConstellationCLI) -> None:
    require_extra("curate", "constellation-kit curate")
    tracking_uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    report = build_curation(config).run(config.input, config.output, config.tokenizer, tracking_uri, config.overwrite)
    if report is not None:
        print(json.dumps(report))


register_command(Command(
    name="curate",
    help="Deduplicate, quality-filter and tokenise raw text, JSONL, Parquet and media manifests into shards."
    + help_suffix("curate"),
    add_arguments=add_arguments,
    run=run,
))
