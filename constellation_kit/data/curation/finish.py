"""The last curation stage: merge the shard indexes, write ``report.json``, log it to MLflow."""

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from constellation_kit.data.curation.report import build_report, log_to_mlflow, stage_step_stats
from constellation_kit.data.curation.shards import merge_shard_indexes

log = logging.getLogger(__name__)


class FinishCuration(PipelineStep):
    """Merge ``shards/*.index.json`` into ``shards/index.json`` and write ``report.json`` (one task).

    Args:
        output_dir: ``DIR``.
        logs_dir: the folder holding each stage's datatrove logging folder.
        roles: per stage, what each of its steps counts (see :func:`build_report`).
        tracking_uri: MLflow tracking URI to log the report to, or ``None``.
        params: the curation settings, logged as MLflow params.
        remove: folders deleted once the report is written: the stages' hand-over files, a copy
            of the corpus each, needed by no later stage.
    """

    name = "report"
    type = "📊 - STATS"

    def __init__(self, output_dir: str, logs_dir: str, roles: dict[str, dict[int, str]],
                 tracking_uri: str | None = None, params: dict[str, Any] | None = None,
                 remove: list[str] | None = None) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.logs_dir = logs_dir
        self.roles = roles
        self.tracking_uri = tracking_uri
        self.params = params or {}
        self.remove = list(remove or [])

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        output = Path(self.output_dir)
        chunks = merge_shard_indexes(output / "shards", output / "work" / "shard_indexes")
        stats = {stage: stage_step_stats(Path(self.logs_dir) / stage) for stage in self.roles}
        report = build_report(stats, self.roles)
        report["chunks"] = chunks
        tmp = output / "report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, output / "report.json")
        self.stat_update("documents_out", value=report["documents_out"])
        for folder in self.remove:
            shutil.rmtree(folder, ignore_errors=True)
        if self.tracking_uri:
            run_id = log_to_mlflow(report, self.tracking_uri, output.name, self.params)
            log.info("curate: logged the report to MLflow run %s at %s", run_id, self.tracking_uri)
        return
        yield  # a generator step with no output
