"""C4's line-level cleaning and page rules (Raffel et al. 2020, section 2.2)."""

from datatrove.pipeline.filters import C4QualityFilter

from constellation_kit.data.curation.word_tokenizer import WORDS


class C4LineFilter(C4QualityFilter):
    """C4's rules. Lines (``splitlines``) are removed from the document, which is kept shorter, when they

    - hold a word longer than ``max_word_length`` (1000 characters);
    - do not end in terminal punctuation (``.``, ``?``, ``!``, ``"``, ``'``) or end in ``...``, with
      ``filter_no_terminal_punct``;
    - have fewer than ``min_words_per_line`` (3) words;
    - contain "javascript" (``filter_javascript``), or a cookie/privacy/terms-of-use phrase (``filter_policy``).

    The whole document is dropped when a kept line contains "lorem ipsum" (``filter_lorem_ipsum``)
    or a curly bracket ``{`` (code; ``filter_curly_bracket``), or when the kept lines hold fewer than
    ``min_num_sentences`` (5) sentences.

    Not in the default config: it rewrites documents, and drops all code (curly brackets) and short
    texts, which suits a web-text source, not a mixed corpus.
    """

    report_name = "c4"
    name = "c4"

    def __init__(self, filter_no_terminal_punct: bool = True, min_num_sentences: int = 5, min_words_per_line: int = 3,
                 max_word_length: int = 1000, filter_lorem_ipsum: bool = True, filter_javascript: bool = True,
                 filter_curly_bracket: bool = True, filter_policy: bool = True) -> None:
        super().__init__(
            filter_no_terminal_punct=filter_no_terminal_punct, min_num_sentences=min_num_sentences,
            min_words_per_line=min_words_per_line, max_word_length=max_word_length,
            filter_lorem_ipsum=filter_lorem_ipsum, filter_javascript=filter_javascript,
            filter_curly_bracket=filter_curly_bracket, filter_policy=filter_policy, language=WORDS,
        )
