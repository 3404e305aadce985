"""``constellation-kit eval``: score a checkpoint on built-in suites, JSONL tasks and lm-evaluation-harness tasks.

::

    constellation-kit eval --ckpt_path runs/tiny/tiny/<run id>/checkpoints/last.ckpt --tasks builtin
    constellation-kit eval --ckpt_path ... --tasks mqar,copying,my_task --include_path my_tasks/ --output scores.json

Each name in ``--tasks`` is a built-in suite (:data:`~constellation_kit.eval.suites.BUILTIN_SUITES`;
``builtin`` names them all), a ``.jsonl`` file, a ``<name>.jsonl`` under ``--include_path``, or else a
harness task (its YAML under ``--include_path`` or shipped with lm_eval, its data on disk). Prints a
table with each task's chance level, writes JSON, and logs ``eval/<task>/<metric>`` to MLflow.
"""

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser, Namespace
from mlflow import MlflowClient

from constellation_kit.cli import Command, ConstellationCLI, register_command
from constellation_kit.errors import ConfigError
from constellation_kit.eval.caption_suite import CaptionChoiceSuite
from constellation_kit.eval.evaluate import TaskResult, evaluate_task
from constellation_kit.eval.generation import generate_text
from constellation_kit.eval.scoring import Scorer
from constellation_kit.eval.suites import BUILTIN_SUITES, TEXT_SUITES, resolve_suite
from constellation_kit.tracking import resolve_tracking_uri
from constellation_kit.trained_model import TrainedModel, load_trained_model

log = logging.getLogger(__name__)


def task_names(tasks: str, multimodal: bool) -> list[str]:
    """``--tasks`` split at commas, ``builtin`` expanded (the caption suites only for a multimodal run)."""
    names: list[str] = []
    for name in (n.strip() for n in tasks.split(",")):
        if name == "builtin":
            names += [*TEXT_SUITES, *(("image_caption", "audio_caption") if multimodal else ())]
        elif name:
            names.append(name)
    if not names:
        raise ConfigError(f"--tasks names no task; built-in suites: builtin, {', '.join(BUILTIN_SUITES)}")
    return list(dict.fromkeys(names))


def evaluate_checkpoint(trained: TrainedModel, names: list[str], include_path: str | None = None,
                        limit: int | None = None, batch_size: int = 16, max_length: int | None = None) -> list[TaskResult]:
    """Every task in ``names`` scored on ``trained``, in order (harness tasks in one harness call at the end)."""
    suites = {name: resolve_suite(name, include_path) for name in names}
    harness_names = [name for name, suite in suites.items() if suite is None]
    manager = harness_tasks(harness_names, include_path) if harness_names else None  # unknown names fail first
    datamodule = trained.datamodule
    if any(isinstance(suite, CaptionChoiceSuite) for suite in suites.values()):
        _set_up(datamodule)  # the caption questions are the run's held-out media
    scorer = Scorer(trained.module, trained.tokenizer, datamodule, batch_size=batch_size, max_length=max_length)

    def generate(prompts: list[str], max_new_tokens: int, stop: tuple[str, ...]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(prompts), batch_size):
            out += generate_text(trained, prompts[start:start + batch_size], max_new_tokens=max_new_tokens, stop=list(stop))
        return out

    results: dict[str, TaskResult] = {}
    for name, suite in suites.items():
        if suite is None:
            continue
        task = suite.build(datamodule).limited(limit)
        started = time.perf_counter()
        result = evaluate_task(scorer, task, generate, progress=True)
        result.source = "builtin" if name in BUILTIN_SUITES else "jsonl"
        results[name] = result
        log.info("%s: %s in %.1f s", task.name, result.metrics, time.perf_counter() - started)
    if harness_names:
        for result in harness_results(trained, harness_names, manager, limit, batch_size, max_length):
            results[result.name] = result
    return [results[name] for name in names if name in results]


def harness_tasks(names: list[str], include_path: str | None) -> Any:
    """The harness's TaskManager over its own tasks and ``include_path``'s, once every name is found in it."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ConfigError(f"{names} are neither built-in suites nor JSONL files, and scoring harness tasks needs "
                          f"lm-eval: pip install 'constellation-kit[eval]' ({error})") from None
    manager = TaskManager(include_path=include_path.split(":") if include_path else None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"no task named {unknown}: not a built-in suite ({', '.join(BUILTIN_SUITES)}), not a .jsonl "
                          "file, and not a harness task (put its YAML under --include_path)")
    return manager


def harness_results(trained: TrainedModel, names: list[str], manager: Any, limit: int | None,
                    batch_size: int, max_length: int | None) -> list[TaskResult]:
    """lm-evaluation-harness tasks run through :class:`~constellation_kit.eval.harness.ConstellationLM`."""
    import lm_eval

    from constellation_kit.eval.harness import ConstellationLM

    model = ConstellationLM(trained=trained, batch_size=batch_size, max_length=max_length)
    output = lm_eval.simple_evaluate(model=model, tasks=names, limit=limit, task_manager=manager, log_samples=True,
                                     bootstrap_iters=0)
    results = []
    for name, scores in output["results"].items():
        metrics = {key.split(",")[0]: float(value) for key, value in scores.items()
                   if "," in key and "_stderr" not in key and isinstance(value, (int, float))}
        samples = output.get("samples", {}).get(name, [])
        multiple_choice = samples and all(len(s["arguments"]) > 1 for s in samples) and "acc" in metrics
        chance = sum(1 / len(s["arguments"]) for s in samples) / len(samples) if multiple_choice else None
        results.append(TaskResult(name, "multiple_choice" if multiple_choice else "harness", len(samples), metrics,
                                  chance, source="lm-eval"))
    return results


def _set_up(datamodule: Any) -> None:
    if getattr(datamodule, "val_dataset", None) is None:
        datamodule.prepare_data()
        datamodule.setup("validate")


def print_table(results: list[TaskResult], title: str) -> None:
    """Each task's scores beside its chance level, as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("task", "kind", "items", "acc", "acc_norm", "exact_match", "chance", "acc - chance"):
        table.add_column(column, justify="left" if column in ("task", "kind") else "right")

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for r in results:
        main = r.metrics.get("acc", r.metrics.get("exact_match"))
        margin = None if r.chance is None or main is None else main - r.chance
        table.add_row(r.name, r.kind, str(r.num_items), cell(r.metrics.get("acc")), cell(r.metrics.get("acc_norm")),
                      cell(r.metrics.get("exact_match")), cell(r.chance), "-" if margin is None else f"{margin:+.3f}")
    console = Console()
    Console(width=max(console.width, 110)).print(table)  # a pipe reports 80 columns: names would be cut


def log_to_mlflow(trained: TrainedModel, results: list[TaskResult], where: str, tracking_uri: str | None,
                  experiment: str | None, output: str | None) -> str | None:
    """``eval/<task>/<metric>`` at the checkpoint's step, in a new run or the checkpoint's own; the run id."""
    if where == "none":
        return None
    client = MlflowClient(resolve_tracking_uri(tracking_uri or trained.tracking_uri))
    if where == "checkpoint":
        run_id = trained.mlflow_run_id
        if run_id is None:
            raise ConfigError("--mlflow checkpoint: this checkpoint's run was not tracked in MLflow; use --mlflow new")
        try:
            client.get_run(run_id)
        except Exception as error:  # noqa: BLE001 (MLflow's message names the store)
            raise ConfigError(f"--mlflow checkpoint: run {run_id} is not in {client.tracking_uri} ({error}); run eval "
                              "from the directory that holds the run's mlflow.db, or pass --tracking_uri") from None
    else:
        logger = ((trained.config.get("trainer") or {}).get("logger") or {})
        name = experiment or (logger.get("init_args") or {}).get("experiment_name") or "eval"
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else client.create_experiment(name)
        run_id = client.create_run(experiment_id, run_name=f"eval-step{trained.global_step}", tags={
            "constellation.eval_of_checkpoint": str(trained.checkpoint_path),
            "constellation.eval_of_run": trained.mlflow_run_id or "(untracked)"}).info.run_id
        client.log_param(run_id, "tasks", ",".join(r.name for r in results))
    for r in results:
        for metric, value in r.metrics.items():
            client.log_metric(run_id, f"eval/{r.name}/{metric}", value, step=trained.global_step)
        if r.chance is not None:
            client.log_metric(run_id, f"eval/{r.name}/chance", r.chance, step=trained.global_step)
    if output:
        client.log_artifact(run_id, output)
    if where == "new":
        client.set_terminated(run_id)
    return run_id


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint file or sharded directory written by fit")
    parser.add_argument("--tasks", type=str, default="builtin",
                        help=f"comma-separated: built-in suites ({', '.join(BUILTIN_SUITES)}; 'builtin' = all), "
                        ".jsonl files, or lm-evaluation-harness task names")
    parser.add_argument("--include_path", type=str | None, default=None,
                        help="folder(s), ':'-separated, holding <task>.jsonl files and harness task YAMLs")
    parser.add_argument("--limit", type=int | None, default=None, help="score at most this many items per task")
    parser.add_argument("--batch_size", type=int, default=16, help="rows per forward call")
    parser.add_argument("--max_length", type=int | None, default=None,
                        help="cut longer rows to their last tokens (default: no cut)")
    parser.add_argument("--output", type=str | None, default=None, help="write the scores here as JSON")
    parser.add_argument("--mlflow", type=Literal["new", "checkpoint", "none"], default="new",
                        help="log the scores to a new MLflow run, to the checkpoint's own run, or nowhere")
    parser.add_argument("--tracking_uri", type=str | None, default=None,
                        help="MLflow store (default: the run's, else $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--experiment", type=str | None, default=None,
                        help="MLflow experiment of a new run (default: the checkpoint's)")
    parser.add_argument("--run_config", type=str | None, default=None,
                        help="the run's config.yaml, when it is not beside or above the checkpoint")
    parser.add_argument("--device", type=str, default="cpu", help="where the model runs")


def run(config: Namespace, cli: ConstellationCLI) -> dict[str, Any]:
    trained = load_trained_model(config.ckpt_path, config.run_config, device=config.device)
    names = task_names(config.tasks, bool(getattr(trained.module, "encoders", None)))
    results = evaluate_checkpoint(trained, names, config.include_path, config.limit, config.batch_size, config.max_length)
    print_table(results, f"{trained.checkpoint_path} (step {trained.global_step})")
    report = {"checkpoint": str(trained.checkpoint_path), "global_step": trained.global_step,
              "results": {r.name: r.to_dict() for r in results}}
    if config.output:
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        Path(config.output).write_text(json.dumps(report, indent=2))
    report["mlflow_run_id"] = log_to_mlflow(trained, results, config.mlflow, config.tracking_uri, config.experiment,
                                            config.output)
    return report


register_command(Command(
    name="eval",
    help="Score a checkpoint on built-in reasoning suites, JSONL tasks and lm-evaluation-harness tasks.",
    add_arguments=add_arguments,
    run=run,
))
