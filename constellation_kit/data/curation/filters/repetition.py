"""Repetition: duplicated lines, paragraphs and n-grams within one document (Gopher's repetition rules)."""

from datatrove.pipeline.filters import GopherRepetitionFilter

from constellation_kit.data.curation.word_tokenizer import WORDS


class RepetitionFilter(GopherRepetitionFilter):
    """Drop a document that repeats itself, keep it otherwise. It is dropped when

    - more than ``dup_line_frac`` (0.3) of its lines, or ``dup_para_frac`` (0.3) of its paragraphs
      (split at blank lines), are repeats of an earlier one;
    - repeated lines hold more than ``dup_line_char_frac`` (0.2) of its characters, or repeated
      paragraphs more than ``dup_para_char_frac`` (0.2);
    - its most frequent 2-, 3- or 4-gram covers more than 20%, 18%, 16% of its characters
      (``top_n_grams``);
    - words in repeated 5- to 10-grams cover more than 15% down to 10% of its characters
      (``dup_n_grams``).

    Gopher's thresholds (Rae et al. 2021, table A1): boilerplate, spam and degenerate generations.
    """

    report_name = "repetition"
    name = "repetition"

    def __init__(
        self,
        dup_line_frac: float | None = 0.3,
        dup_para_frac: float | None = 0.3,
        dup_line_char_frac: float | None = 0.2,
        dup_para_char_frac: float | None = 0.2,
        top_n_grams: list[tuple[int, float]] = [(2, 0.2), (3, 0.18), (4, 0.16)],  # noqa: B006 (never mutated)
        dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)],  # noqa: B006
    ) -> None:
        super().__init__(
            dup_line_frac=dup_line_frac, dup_para_frac=dup_para_frac, dup_line_char_frac=dup_line_char_frac,
            dup_para_char_frac=dup_para_char_frac, top_n_grams=tuple(map(tuple, top_n_grams)),
            dup_n_grams=tuple(map(tuple, dup_n_grams)), language=WORDS,
        )
