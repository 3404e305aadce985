"""Curation: raw text, JSONL, Parquet and multimodal manifests in; deduplicated, filtered, tokenised shards out.

Built on datatrove (readers' shape, executors, dedup stages, Gopher/C4 filters) and litdata (the
shards). ``constellation-kit curate`` runs :class:`Curation`; ``docs/curation.md`` is the guide.
"""

from constellation_kit.data.curation.exact_dedup import ExactDedup
from constellation_kit.data.curation.filters import (
    C4LineFilter,
    LengthFilter,
    RepetitionFilter,
    SymbolRatioFilter,
    WordRatioFilter,
)
from constellation_kit.data.curation.near_dedup import NearDedup
from constellation_kit.data.curation.pipeline import Curation
from constellation_kit.data.curation.tokenizer import SPECIAL_TOKENS, train_tokenizer

__all__ = [
    "C4LineFilter", "Curation", "ExactDedup", "LengthFilter", "NearDedup", "RepetitionFilter", "SPECIAL_TOKENS",
    "SymbolRatioFilter", "WordRatioFilter", "train_tokenizer",
]
