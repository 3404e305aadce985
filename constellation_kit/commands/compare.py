"""``constellation-kit compare``: the runs of an MLflow experiment side by side.

One row per run: the config keys that differ between the runs (only those), each chosen metric's
final and best value, tokens/s and wall time. ``--plot`` draws the metrics' curves, one line per run,
and logs the picture (and the table) to MLflow in a run tagged ``constellation.comparison`` that later
comparisons leave out; ``--output`` writes the table as markdown or CSV.
"""

import tempfile
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace
from mlflow import MlflowClient

from constellation_kit.cli import Command, ConstellationCLI, register_command
from constellation_kit.compare import comparison_table, load_runs, plot_curves
from constellation_kit.compare.runs import COMPARISON_TAG
from constellation_kit.errors import ConfigError
from constellation_kit.tracking import resolve_tracking_uri

DEFAULT_METRICS = "train/loss,val/loss"


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--experiment", type=str, required=True, help="the MLflow experiment whose runs to compare")
    parser.add_argument("--tracking_uri", type=str | None, default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    parser.add_argument("--runs", type=str, nargs="+", default=None,
                        help="only these run ids, in this order (default: every active run, oldest first)")
    parser.add_argument("--metrics", type=str, default=DEFAULT_METRICS,
                        help="comma-separated metrics to show (final and best value) and plot")
    parser.add_argument("--plot", type=str | None, default=None,
                        help="write the metrics' curves to this PNG and log it to MLflow")
    parser.add_argument("--output", type=str | None, default=None, help="also write the table to FILE.md or FILE.csv")


def run(config: Namespace, cli: ConstellationCLI) -> None:
    output = Path(config.output) if config.output else None
    if output is not None and output.suffix not in (".md", ".csv"):
        raise ConfigError(f"--output {output}: the table is written as markdown (.md) or CSV (.csv)")
    metrics = [metric.strip() for metric in config.metrics.split(",") if metric.strip()]
    if not metrics:
        raise ConfigError("--metrics is empty: name at least one metric, e.g. --metrics val/loss")
    client = MlflowClient(resolve_tracking_uri(config.tracking_uri))
    runs = load_runs(client, config.experiment, metrics, config.runs)
    if not runs:
        raise ConfigError(f"experiment {config.experiment!r} has no active runs to compare")
    missing = [m for m in metrics if not any(run.histories.get(m) for run in runs)]
    if missing:
        print(f"note: no run logged {', '.join(missing)}")
    table = comparison_table(runs, metrics)
    title = f"{config.experiment}: {len(runs)} run{'s' * (len(runs) != 1)}"
    table.print(title)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(table.to_markdown() if output.suffix == ".md" else table.to_csv())
        print(f"table written to {output}")
    if config.plot:
        plot = Path(config.plot)
        if not plot_curves(runs, metrics, plot, title):
            raise ConfigError(f"nothing to plot: no run logged {', '.join(metrics)}")
        print(f"curves written to {plot}")
        log_comparison(client, runs[0], [run.run_id for run in runs], plot, table.to_markdown())


def log_comparison(client: MlflowClient, first, run_ids: list[str], plot: Path, markdown: str) -> None:
    """Keep the picture and the table in MLflow, in a run of their own beside the runs they compare."""
    experiment_id = client.get_run(first.run_id).info.experiment_id
    comparison = client.create_run(experiment_id, run_name="compare",
                                   tags={COMPARISON_TAG: "true", "compared_runs": ",".join(run_ids)[:5000]})
    run_id = comparison.info.run_id
    client.log_artifact(run_id, str(plot))
    with tempfile.TemporaryDirectory() as directory:
        table = Path(directory) / "comparison.md"
        table.write_text(markdown)
        client.log_artifact(run_id, str(table))
    client.set_terminated(run_id)
    print(f"logged to MLflow run {run_id} ({COMPARISON_TAG})")


register_command(Command(
    name="compare",
    help="MLflow runs of one experiment side by side: differing config keys, final and best metrics, curves.",
    add_arguments=add_arguments,
    run=run,
))
