"""``report.json``: every document the curation read, accounted for by what became of it.

The counts come from datatrove's per-task stats files (``logs/<stage>/stats/<task>.json``), not
from the stats of the last invocation alone, so a resumed run reports the whole corpus.
"""

import json
import logging
from pathlib import Path
from typing import Any

from constellation_kit.data.curation.reader import SKIP_PREFIX

log = logging.getLogger(__name__)


def _total(value: Any) -> int:
    """A datatrove stat is a bare count, or a dict with its ``total`` when it had a value or unit."""
    return int(value if isinstance(value, (int, float)) else value.get("total", 0))


def stage_step_stats(logging_dir: Path) -> list[dict[str, int]]:
    """The counts of each step of one stage (in pipeline order), summed over the stage's task files."""
    steps: list[dict[str, int]] = []
    for task_file in sorted((logging_dir / "stats").glob("*.json")):
        for i, step in enumerate(json.loads(task_file.read_text())):
            if i == len(steps):
                steps.append({})
            for key, value in step["stats"].items():
                steps[i][key] = steps[i].get(key, 0) + _total(value)
    return steps


def build_report(stats: dict[str, list[dict[str, int]]], roles: dict[str, dict[int, str]]) -> dict[str, Any]:
    """The report from each stage's step stats and what each step is.

    ``roles[stage][i]`` names step ``i`` of ``stage``: ``"read"``, ``"media"``, ``"exact"``, ``"near"``,
    ``"shards"``, or ``"filter:<name>"``.
    """
    report: dict[str, Any] = {
        "documents_in": 0, "skipped": {}, "filtered": {}, "exact_duplicates_removed": 0,
        "near_duplicates_removed": 0, "documents_out": 0, "tokens_out": 0,
    }
    for stage, steps in roles.items():
        for i, role in steps.items():
            counts = stats.get(stage, [])[i] if i < len(stats.get(stage, [])) else {}
            for key, value in counts.items():
                if key.startswith(SKIP_PREFIX):
                    reason = key[len(SKIP_PREFIX):]
                    report["skipped"][reason] = report["skipped"].get(reason, 0) + value
            if role == "read":
                report["documents_in"] += counts.get("documents_in", 0)
            elif role == "exact":
                report["exact_duplicates_removed"] += counts.get("dropped", 0)
            elif role == "near":
                report["near_duplicates_removed"] += counts.get("dropped", 0)
            elif role.startswith("filter:"):
                name = role.split(":", 1)[1]
                report["filtered"][name] = report["filtered"].get(name, 0) + counts.get("dropped", 0)
            elif role == "shards":
                report["documents_out"] += counts.get("documents_out", 0)
                report["tokens_out"] += counts.get("tokens_out", 0)
    removed = (sum(report["skipped"].values()) + sum(report["filtered"].values())
               + report["exact_duplicates_removed"] + report["near_duplicates_removed"])
    # Every document read is skipped, filtered, a duplicate, or written: a gap is a bug, said loudly.
    report["accounted"] = removed + report["documents_out"] == report["documents_in"]
    return report


def log_to_mlflow(report: dict[str, Any], tracking_uri: str, run_name: str, params: dict[str, Any]) -> str:
    """Log the report's counts as metrics (``curate/...``) and ``params`` to a run of experiment ``curate``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("curate")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("curate")
    run = client.create_run(experiment_id, run_name=run_name)
    metrics = {f"curate/{k}": v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for group in ("skipped", "filtered"):
        metrics.update({f"curate/{group}/{k}": v for k, v in report[group].items()})
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    client.log_dict(run.info.run_id, report, "report.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
