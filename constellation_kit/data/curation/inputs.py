"""Which files ``curate --input`` names, in a fixed order, and how each is read."""

from pathlib import Path

from constellation_kit.errors import ConfigError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
"""A folder contributes the files with these endings; a file named on the command line is read whatever
its ending (as plain text unless it is JSONL or Parquet), so an unusual name is never silently dropped."""


def file_format(path: str) -> str:
    """``"jsonl"``, ``"parquet"`` or ``"text"`` from the file name."""
    name = path.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"


def list_input_files(inputs: list[str]) -> list[str]:
    """Every file under ``inputs`` (files and folders), absolute, sorted, without repeats.

    The order is the contract between curation stages: datatrove's dedup stages address documents by
    their index in a task's stream, and task ``r`` reads files ``r, r + tasks, ...`` of this list.
    """
    files: set[str] = set()
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_file():
            files.add(str(path.resolve()))
        elif path.is_dir():
            files.update(str(p.resolve()) for p in path.rglob("*")
                         if p.is_file() and p.name.lower().endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES))
        else:
            raise ConfigError(f"curate --input {given}: no such file or folder")
    if not files:
        raise ConfigError(
            f"curate --input {' '.join(inputs)}: no input files (folders contribute "
            f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES)} files)"
        )
    return sorted(files)
