"""Symbol ratios: hashes and ellipses per word, bullet and ellipsis lines (Gopher's symbol rules)."""

from datatrove.pipeline.filters import GopherQualityFilter

from constellation_kit.data.curation.word_tokenizer import WORDS


class SymbolRatioFilter(GopherQualityFilter):
    """Drop a document when any of these holds, keep it otherwise:

    - ``#`` characters per word above ``max_symbol_word_ratio`` (0.1), or ``...``/``…`` per word above it;
    - more than ``max_bullet_lines_ratio`` (0.9) of its lines start with a bullet (``•`` or ``-``);
    - more than ``max_ellipsis_lines_ratio`` (0.3) of its lines end with ``...`` or ``…``.

    Gopher's thresholds (Rae et al. 2021, appendix A): hashtag clouds, lists of links and
    truncated previews. ``None`` switches a rule off.
    """

    report_name = "symbols"
    name = "symbols"

    def __init__(self, max_symbol_word_ratio: float | None = 0.1, max_bullet_lines_ratio: float | None = 0.9,
                 max_ellipsis_lines_ratio: float | None = 0.3) -> None:
        super().__init__(
            min_doc_words=None, max_doc_words=None, min_avg_word_length=None, max_avg_word_length=None,
            max_symbol_word_ratio=max_symbol_word_ratio, max_bullet_lines_ratio=max_bullet_lines_ratio,
            max_ellipsis_lines_ratio=max_ellipsis_lines_ratio, max_non_alpha_words_ratio=None, min_stop_words=None,
            language=WORDS,
        )
