"""Quality filters: each keeps or drops a document by one family of Gopher/C4 heuristics.

Each is a datatrove filter with a subset of its checks switched on, so a curate config names, tunes
or removes one family at a time, and the report counts drops per family (``filtered``). Any other
datatrove ``BaseFilter`` (a language filter, a URL filter) can be listed in a config as well.
"""

from constellation_kit.data.curation.filters.c4 import C4LineFilter
from constellation_kit.data.curation.filters.length import LengthFilter
from constellation_kit.data.curation.filters.repetition import RepetitionFilter
from constellation_kit.data.curation.filters.symbols import SymbolRatioFilter
from constellation_kit.data.curation.filters.words import WordRatioFilter

__all__ = ["C4LineFilter", "LengthFilter", "RepetitionFilter", "SymbolRatioFilter", "WordRatioFilter", "report_name"]


def report_name(step: object) -> str:
    """The key a filter's drops are counted under in ``report.json``: its ``report_name``, else its class name."""
    return getattr(step, "report_name", None) or type(step).__name__
