"""Word statistics: mean word length, words with letters, stop words (Gopher's word rules)."""

from datatrove.pipeline.filters import GopherQualityFilter

from constellation_kit.data.curation.word_tokenizer import WORDS


class WordRatioFilter(GopherQualityFilter):
    """Drop a document when any of these holds, keep it otherwise:

    - its mean word length (over words with a non-punctuation character) is outside
      ``[min_mean_word_length, max_mean_word_length]`` (3 to 10 characters): token soup or hex dumps;
    - fewer than ``min_alpha_words_ratio`` (0.8) of its tokens contain a letter: tables of numbers;
    - it has fewer than ``min_stop_words`` (2) distinct English stop words (``the``, ``be``, ``to``,
      ``of``, ``and``, ``that``, ``have``, ``with``): not running English prose.

    Gopher's thresholds (Rae et al. 2021, appendix A). The stop-word rule is English-only: set
    ``min_stop_words`` to ``null`` for other languages or code. ``None`` switches a rule off.
    """

    report_name = "words"
    name = "words"

    def __init__(self, min_mean_word_length: int | None = 3, max_mean_word_length: int | None = 10,
                 min_alpha_words_ratio: float | None = 0.8, min_stop_words: int | None = 2) -> None:
        super().__init__(
            min_doc_words=None, max_doc_words=None, min_avg_word_length=min_mean_word_length,
            max_avg_word_length=max_mean_word_length, max_symbol_word_ratio=None, max_bullet_lines_ratio=None,
            max_ellipsis_lines_ratio=None, max_non_alpha_words_ratio=min_alpha_words_ratio,
            min_stop_words=min_stop_words, language=WORDS,
        )
