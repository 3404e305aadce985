"""The comparison as a table: one row per run; the differing config keys, then each metric's final and best value."""

import csv
import io
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from constellation_kit.compare.config_diff import differing_keys, section_value, short_key, short_value
from constellation_kit.compare.runs import RunSummary


@dataclass
class ComparisonTable:
    """``headers`` and one row of display strings per run, plus which leading columns are config keys."""

    headers: list[str]
    rows: list[list[str]]
    config_columns: int

    def to_markdown(self) -> str:
        """A GitHub-flavoured markdown table."""
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Comma-separated values with a header line."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.headers)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def to_rich(self, title: str) -> Table:
        """A rich table for the terminal; config columns in one colour, metrics right-aligned."""
        table = Table(title=title, header_style="bold")
        for index, header in enumerate(self.headers):
            config = 2 <= index < 2 + self.config_columns
            # Fold, never cut with an ellipsis: a truncated run name or value is a wrong table.
            table.add_column(header, style="cyan" if config else None, overflow="fold",
                             justify="left" if index < 2 + self.config_columns else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def print(self, title: str, console: Console | None = None) -> None:
        """Print the rich table (to stdout unless ``console`` says otherwise).

        Piped into a file or a log, the table keeps its full width instead of rich's default 80 columns.
        """
        if console is None:
            console = Console()
            if not console.is_terminal:
                console = Console(width=max(80, self.width()))
        console.print(self.to_rich(title))

    def width(self) -> int:
        """Characters a rich table needs to show every cell on one line."""
        widths = [max(len(cell) for cell in column) for column in zip(self.headers, *self.rows)]
        return sum(widths) + 3 * len(widths) + 1


def comparison_table(runs: list[RunSummary], metrics: list[str]) -> ComparisonTable:
    """Rows of ``runs``: name, status, the config keys that differ between them, each metric's final and best
    value, mean tokens/s and wall time. With a single run every key "differs" from nothing, so none is shown."""
    keys = differing_keys([run.params for run in runs]) if len(runs) > 1 else []
    headers = ["run", "status", *(short_key(key) for key in keys)]
    for metric in metrics:
        headers += [f"{metric} final", f"{metric} best"]
    headers += ["tokens/s", "wall time"]
    rows = []
    for run in runs:
        row = [run.name, run.status, *(short_value(section_value(run.params, key)) for key in keys)]
        for metric in metrics:
            row += [number(run.final(metric)), number(run.best(metric))]
        row += [number(run.tokens_per_second(), digits=0), duration(run.wall_seconds)]
        rows.append(row)
    return ComparisonTable(headers=headers, rows=rows, config_columns=len(keys))


def number(value: float | None, digits: int = 4) -> str:
    """``value`` to ``digits`` significant figures (``-`` for none)."""
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if digits else f"{value:,.0f}"


def duration(seconds: float | None) -> str:
    """``754.2`` -> ``12m34s``; ``None`` (still running) -> ``running``."""
    if seconds is None:
        return "running"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{rest:02d}s"
