"""Document length in words (Gopher's first rule)."""

from datatrove.pipeline.filters import GopherQualityFilter

from constellation_kit.data.curation.word_tokenizer import WORDS


class LengthFilter(GopherQualityFilter):
    """Keep a document whose word count is within ``[min_words, max_words]``; drop it otherwise.

    Words are counted as Gopher counts them (Rae et al. 2021, appendix A): tokens holding at least
    one character that is not punctuation, so ``"# # # ..."`` has no words. Gopher's bounds are 50
    and 100,000: a page of fewer than 50 words is navigation or a stub, one of more than 100,000 is
    a dump. ``None`` switches a bound off.
    """

    report_name = "length"
    name = "length"

    def __init__(self, min_words: int | None = 50, max_words: int | None = 100_000) -> None:
        super().__init__(
            min_doc_words=min_words, max_doc_words=max_words, min_avg_word_length=None, max_avg_word_length=None,
            max_symbol_word_ratio=None, max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
            max_non_alpha_words_ratio=None, min_stop_words=None, language=WORDS,
        )
