"""What MLflow holds about each run to compare: params, tags, status, times and metric histories."""

from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from constellation_kit.errors import ConfigError

COMPARISON_TAG = "constellation.comparison"
"""Tag of the MLflow runs that ``compare`` itself creates to hold its pictures; never compared themselves."""

TOKENS_PER_SECOND = ("train/items_per_sec", "train/device/items_per_sec")
"""Where tokens/s is logged: Lightning's ThroughputMonitor (callbacks/throughput.yaml) counts items = tokens."""


@dataclass
class RunSummary:
    """One MLflow run: its params (the flattened config), tags, status, times, and each metric's ``[(step, value)]``."""

    run_id: str
    name: str
    status: str
    start_ms: int
    end_ms: int | None
    params: dict[str, str]
    tags: dict[str, str]
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def wall_seconds(self) -> float | None:
        """Seconds from start to end; ``None`` while the run has not ended."""
        return None if self.end_ms is None else (self.end_ms - self.start_ms) / 1000

    def final(self, metric: str) -> float | None:
        """The value at the highest step, ``None`` if never logged."""
        history = self.histories.get(metric)
        return max(history)[1] if history else None

    def best(self, metric: str) -> float | None:
        """The highest value for accuracy-like metrics (``acc``, ``accuracy``, ``mfu``, ``per_sec``), else the lowest."""
        history = self.histories.get(metric)
        if not history:
            return None
        values = [value for _, value in history]
        return max(values) if higher_is_better(metric) else min(values)

    def tokens_per_second(self) -> float | None:
        """Mean logged training tokens/s, if the run logged throughput."""
        for metric in TOKENS_PER_SECOND:
            history = self.histories.get(metric)
            if history:
                return sum(value for _, value in history) / len(history)
        return None


def higher_is_better(metric: str) -> bool:
    """Whether larger values of ``metric`` are better, judged by its name."""
    name = metric.lower()
    return any(word in name for word in ("acc", "mfu", "per_sec", "f1", "exact_match"))


def load_runs(
    client: MlflowClient, experiment: str, metrics: list[str], run_ids: list[str] | None = None
) -> list[RunSummary]:
    """The runs of ``experiment`` (or only ``run_ids``), oldest first, with the histories of ``metrics``.

    Deleted runs and ``compare``'s own picture runs are left out. Raises :class:`ConfigError` naming the
    experiments that exist when ``experiment`` does not, and the unknown ids when a run id is not in it.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}; "
                          f"it has: {', '.join(names) or 'none'} (pass --tracking_uri for another store)")
    runs: list[Run] = client.search_runs([found.experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                         order_by=["attributes.start_time ASC"], max_results=10_000)
    runs = [run for run in runs if COMPARISON_TAG not in run.data.tags]
    if run_ids:
        by_id = {run.info.run_id: run for run in runs}
        unknown = [run_id for run_id in run_ids if run_id not in by_id]
        if unknown:
            raise ConfigError(f"runs {', '.join(unknown)} are not active runs of experiment {experiment!r}")
        runs = [by_id[run_id] for run_id in run_ids]
    wanted = [*metrics, *TOKENS_PER_SECOND]
    return [summarise(client, run, wanted) for run in runs]


def summarise(client: MlflowClient, run: Run, metrics: list[str]) -> RunSummary:
    """A :class:`RunSummary` of ``run`` with the full histories of those of ``metrics`` it logged."""
    logged = run.data.metrics
    histories = {
        metric: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric)]
        for metric in metrics if metric in logged
    }
    return RunSummary(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        status=run.info.status,
        start_ms=run.info.start_time,
        end_ms=run.info.end_time,
        params=dict(run.data.params),
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        histories=histories,
    )
