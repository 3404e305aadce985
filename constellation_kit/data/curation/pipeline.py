"""``curate``: raw files -> skip bad input -> quality filters -> exact dedup -> near dedup -> tokenised shards.

Each stage is a datatrove pipeline run by a datatrove executor over ``tasks`` tasks (local
processes by default, SLURM or Ray on a cluster); stages hand documents on through one gzipped
JSONL file per task under ``DIR/work/``. datatrove marks each finished task in
``DIR/work/logs/<stage>/completions/``, so a rerun after a crash does only the tasks that had not
finished, and a rerun of a finished curation does nothing.

Order and accounting. A document is counted once, by the first step that removes it:
``skipped`` (bad input: reader and media check), ``filtered`` (per quality filter, in config order),
``exact_duplicates_removed``, ``near_duplicates_removed``; what remains is ``documents_out``.
Filters run before deduplication, as in FineWeb: they are cheap and per document, and a junk page
copied a thousand times is then removed as junk, not kept once as the survivor of its cluster.

    stage            tasks        steps
    read             tasks        read, media check, filters..., write work/clean, exact signatures
    exact_find       1            merge the sorted hashes, list duplicates
    exact_filter     tasks        read work/clean, drop duplicates, write work/unique, MinHash signatures
    near_buckets     bands        candidate pairs per LSH band
    near_cluster     1            union-find, list all but one of each cluster
    near_filter      tasks        read work/unique, drop them, write work/final
    tokenizer        1            train the BPE on work/final (only when no --tokenizer is given)
    shards           tasks        tokenise work/final into DIR/shards (litdata)
    report           1            merge the shard indexes, write DIR/report.json, log to MLflow
"""

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from constellation_kit.data.curation.exact_dedup import ExactDedup
from constellation_kit.data.curation.executors import ExecutorKind, make_executor
from constellation_kit.data.curation.filters import LengthFilter, RepetitionFilter, SymbolRatioFilter, WordRatioFilter, report_name
from constellation_kit.data.curation.finish import FinishCuration
from constellation_kit.data.curation.inputs import list_input_files
from constellation_kit.data.curation.media_check import MediaCheck
from constellation_kit.data.curation.near_dedup import NearDedup
from constellation_kit.data.curation.reader import CurationReader
from constellation_kit.data.curation.row_kinds import ForRows
from constellation_kit.data.curation.shards import ShardWriter
from constellation_kit.data.curation.task_files import TaskFileReader, write_task_files
from constellation_kit.data.curation.tokenizer import TrainTokenizerStep, check_tokenizer, file_digest
from constellation_kit.data.media import DEFAULT_MAX_MEDIA_BYTES
from constellation_kit.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One datatrove pipeline of the curation: its steps, how many tasks, and what each step counts."""

    name: str
    steps: list[PipelineStep]
    tasks: int
    roles: dict[int, str]


class Curation:
    """The curation settings, as a curate YAML gives them (``recipes/curate/default.yaml``).

    Args:
        tasks: datatrove tasks per parallel stage; input files are dealt to tasks round-robin, so
            more tasks than files leaves some idle. On a cluster, hundreds.
        workers: tasks running at once on this machine (``-1``: all of them; ``1``: in this process).
        executor: ``local`` (processes on this machine), ``slurm`` or ``ray`` (see docs/curation.md).
        executor_options: extra arguments for the executor (SLURM: ``partition``, ``time``, ...).
        text_keys: the JSONL/Parquet fields a document's text is read from, first present wins.
        max_media_bytes: media files larger than this are skipped (``media_too_large``).
        filters: quality filters for text documents, in order; any datatrove ``BaseFilter`` (the kit's
            Gopher/C4 families in ``constellation_kit.data.curation.filters``, or datatrove's own).
        caption_filters: quality filters for media rows' captions (default: 2 to 500 words), counted
            as ``caption_<name>``.
        exact_dedup: exact deduplication settings.
        near_dedup: MinHash LSH settings (``threshold``).
        vocab_size: the BPE's size when curate trains the tokenizer (no ``--tokenizer`` given).
        chunk_bytes: litdata chunk size of the shards.
        keep_work_files: keep the stages' hand-over files (``DIR/work/clean``, ``unique``, ``final``
            and the dedup signatures: each a copy of the corpus) after the report; by default they
            are deleted. Keep them to repair shards lost after the run by rerunning their tasks.
    """

    def __init__(
        self,
        tasks: int = 4,
        workers: int = -1,
        executor: ExecutorKind = "local",
        executor_options: dict[str, Any] | None = None,
        text_keys: list[str] = ["text", "caption"],  # noqa: B006 (never mutated)
        max_media_bytes: int | None = DEFAULT_MAX_MEDIA_BYTES,
        filters: list[BaseFilter] | None = None,
        caption_filters: list[BaseFilter] | None = None,
        exact_dedup: ExactDedup | None = None,
        near_dedup: NearDedup | None = None,
        vocab_size: int = 32768,
        chunk_bytes: str = "64MB",
        keep_work_files: bool = False,
    ) -> None:
        if tasks < 1:
            raise ConfigError(f"curate tasks={tasks}: at least 1")
        self.tasks = tasks
        self.workers = workers
        self.executor = executor
        self.executor_options = dict(executor_options or {})
        self.text_keys = list(text_keys)
        self.max_media_bytes = max_media_bytes
        self.filters = list(filters) if filters is not None else [
            LengthFilter(), SymbolRatioFilter(), WordRatioFilter(), RepetitionFilter()]
        self.caption_filters = list(caption_filters) if caption_filters is not None else [
            LengthFilter(min_words=2, max_words=500)]
        self._row_filters = [ForRows(f, media=False) for f in self.filters] + [
            ForRows(f, media=True) for f in self.caption_filters]
        names = [report_name(f) for f in self._row_filters]
        if len(set(names)) != len(names):
            raise ConfigError(f"curate filters {names}: two filters report under one name; give each its own report_name")
        self.exact_dedup = exact_dedup or ExactDedup()
        self.near_dedup = near_dedup or NearDedup()
        self.vocab_size = vocab_size
        self.chunk_bytes = chunk_bytes
        self.keep_work_files = keep_work_files

    def describe(self) -> dict[str, Any]:
        """The settings as plain values: the resume fingerprint, and the MLflow params."""
        return {
            "tasks": self.tasks, "text_keys": self.text_keys, "max_media_bytes": self.max_media_bytes,
            "filters": [{"class": type(f).__qualname__, **_plain(vars(f))} for f in self.filters],
            "caption_filters": [{"class": type(f).__qualname__, **_plain(vars(f))} for f in self.caption_filters],
            "exact_dedup": self.exact_dedup.enabled,
            "near_dedup": _plain(vars(self.near_dedup)), "vocab_size": self.vocab_size, "chunk_bytes": self.chunk_bytes,
        }

    # -- the stages ------------------------------------------------------------------------------

    def stages(self, files: list[str], output: Path, tokenizer: Path, train_tokenizer: bool,
               tracking_uri: str | None = None) -> list[Stage]:
        work = output / "work"
        clean, unique, final = str(work / "clean"), str(work / "unique"), str(work / "final")
        exact, near = self.exact_dedup, self.near_dedup
        stages = []

        read: list[PipelineStep] = [CurationReader(files, tuple(self.text_keys)), MediaCheck(self.max_media_bytes)]
        roles = {0: "read", 1: "media"}
        for f in self._row_filters:
            roles[len(read)] = f"filter:{report_name(f)}"
            read.append(f)
        read.append(write_task_files(clean))
        if exact.enabled:
            read.append(exact.signature(work / "exact"))
        stages.append(Stage("read", read, self.tasks, roles))

        source = clean
        if exact.enabled:
            stages.append(Stage("exact_find", [exact.find(work / "exact")], 1, {}))
            unique_steps: list[PipelineStep] = [TaskFileReader(clean), exact.filter(work / "exact"), write_task_files(unique)]
            if near.enabled:
                unique_steps.append(near.signature(work / "near"))
            stages.append(Stage("exact_filter", unique_steps, self.tasks, {1: "exact"}))
            source = unique
        elif near.enabled:
            stages.append(Stage("near_signature", [TaskFileReader(clean), write_task_files(unique),
                                                   near.signature(work / "near")], self.tasks, {}))
            source = unique
        if near.enabled:
            stages.append(Stage("near_buckets", [near.buckets(work / "near")], near.bands, {}))
            stages.append(Stage("near_cluster", [near.cluster(work / "near")], 1, {}))
            stages.append(Stage("near_filter", [TaskFileReader(unique), near.filter(work / "near"),
                                                write_task_files(final)], self.tasks, {1: "near"}))
            source = final
        if train_tokenizer:
            stages.append(Stage("tokenizer", [TrainTokenizerStep(source, str(tokenizer), self.vocab_size)], 1, {}))
        stages.append(Stage("shards", [TaskFileReader(source), ShardWriter(str(output / "shards"), str(tokenizer),
                                                                           self.chunk_bytes)], self.tasks, {1: "shards"}))
        roles_by_stage = {s.name: s.roles for s in stages if s.roles}
        remove = [] if self.keep_work_files else [str(work / part) for part in ("clean", "unique", "final", "exact", "near")]
        stages.append(Stage("report", [FinishCuration(str(output), str(work / "logs"), roles_by_stage, tracking_uri,
                                                      _flatten(self.describe()), remove)], 1, {}))
        return stages

    # -- running ---------------------------------------------------------------------------------

    def run(self, inputs: list[str], output: str | Path, tokenizer: str | None = None,
            tracking_uri: str | None = None, overwrite: bool = False) -> dict[str, Any] | None:
        """Curate ``inputs`` into ``output``; return the report (``None`` when a cluster executor only submitted jobs)."""
        output = Path(output).resolve()
        files = list_input_files(inputs)
        given = Path(tokenizer).resolve() if tokenizer else None
        if given is not None:
            check_tokenizer(given)
        fingerprint = self._fingerprint(files, given)
        self._claim(output, fingerprint, overwrite, given)
        target = output / "tokenizer.json"
        if given is not None and given != target:
            shutil.copyfile(given, target)
        stages = self.stages(files, output, target, train_tokenizer=given is None, tracking_uri=tracking_uri)
        logs = output / "work" / "logs"
        executor: PipelineExecutor | None = None
        for number, stage in enumerate(stages, start=1):
            # Local stages run one after another here, so progress reads stage by stage; a cluster
            # executor gets the chain through `depends` and the last one submits them all.
            if self.executor == "local":
                print(f"curate [{number}/{len(stages)}] {stage.name} ({stage.tasks} task{'s' * (stage.tasks > 1)})",
                      flush=True)
            workers = min(self.workers if self.workers > 0 else stage.tasks, stage.tasks)
            executor = make_executor(self.executor, stage.steps, stage.tasks, workers, logs / stage.name,
                                     None if self.executor == "local" else executor, self.executor_options, stage.name)
            if self.executor == "local":
                executor.run()
        if self.executor != "local":
            executor.run()
            print(f"curate: submitted {len(stages)} stages to {self.executor}; the report will be {output / 'report.json'}")
            return None
        return json.loads((output / "report.json").read_text())

    def _fingerprint(self, files: list[str], tokenizer: Path | None) -> str:
        listing = [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files]
        key = {"files": listing, "config": self.describe(), "tokenizer": file_digest(tokenizer) if tokenizer else None}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def _claim(self, output: Path, fingerprint: str, overwrite: bool, tokenizer: Path | None) -> None:
        """Make ``output`` this curation's: new, or the same inputs and settings (resume), or wiped with ``overwrite``."""
        stamp = output / "work" / "fingerprint.json"
        if stamp.is_file() and json.loads(stamp.read_text())["fingerprint"] != fingerprint:
            if not overwrite:
                raise ConfigError(
                    f"curate --output {output}: it holds a curation of other inputs or settings; resuming it would "
                    "mix the two. Choose a new --output, or pass --overwrite true to delete it and start again"
                )
            for part in ("work", "shards", "report.json", "tokenizer.json"):
                path = output / part
                if tokenizer is not None and path == tokenizer:
                    continue  # never delete the tokenizer the user handed in
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        elif not stamp.is_file() and output.is_dir() and any(output.iterdir()) and not overwrite:
            raise ConfigError(f"curate --output {output}: the folder exists and is not a curation; choose an empty or new folder")
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """The public, JSON-able attributes of a step (datatrove's stats and tokenizers left out)."""
    return {k: v for k, v in values.items()
            if not k.startswith("_") and k not in ("stats", "exclusion_writer", "language")
            and isinstance(v, (int, float, str, bool, list, tuple, type(None)))}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
