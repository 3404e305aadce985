"""``constellation-kit compare``: MLflow runs of one experiment side by side.

:mod:`runs` reads what MLflow holds, :mod:`config_diff` keeps only the config keys that differ,
:mod:`table` renders the table (terminal, markdown, CSV), :mod:`curves` draws the metric curves.
"""

from constellation_kit.compare.config_diff import differing_keys, short_key
from constellation_kit.compare.curves import plot_curves
from constellation_kit.compare.runs import RunSummary, load_runs
from constellation_kit.compare.table import ComparisonTable, comparison_table

__all__ = ["ComparisonTable", "RunSummary", "comparison_table", "differing_keys", "load_runs", "plot_curves",
           "short_key"]
