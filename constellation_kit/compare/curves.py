"""The chosen metrics' curves, one line per run, one panel per metric, as a PNG."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
import matplotlib.pyplot as plt  # noqa: E402

from constellation_kit.compare.runs import RunSummary  # noqa: E402


def plot_curves(runs: list[RunSummary], metrics: list[str], path: Path, title: str) -> list[str]:
    """Draw each metric's history against the step for every run into ``path`` (PNG).

    Returns the metrics that had something to draw; a metric no run logged gets no panel.
    """
    drawn = [metric for metric in metrics if any(run.histories.get(metric) for run in runs)]
    if not drawn:
        return []
    figure, axes = plt.subplots(1, len(drawn), figsize=(5.5 * len(drawn), 4), squeeze=False)
    colours = plt.get_cmap("tab10")
    for axis, metric in zip(axes[0], drawn):
        for index, run in enumerate(runs):
            history = sorted(run.histories.get(metric, []))
            if history:
                steps, values = zip(*history)
                axis.plot(steps, values, label=run.name, color=colours(index % 10),
                          marker="o" if len(history) < 12 else None, markersize=3)
        axis.set_title(metric)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    # One legend for all panels, below them: inside a panel it hides the curves once there are a few runs.
    handles, labels = axes[0][0].get_legend_handles_labels()
    for axis in axes[0][1:]:
        more = axis.get_legend_handles_labels()
        handles += [h for h, label in zip(*more) if label not in labels]
        labels += [label for label in more[1] if label not in labels]
    columns = min(len(labels), 3 if len(drawn) == 1 else 5)
    rows = -(-len(labels) // columns)
    figure.legend(handles, labels, loc="lower center", ncol=columns, fontsize="small", frameon=False)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.05 + 0.045 * rows, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return drawn
