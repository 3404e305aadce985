"""A dependency-free word and sentence splitter for datatrove's filters and MinHash shingles.

datatrove assigns English to spaCy, which its ``processing`` extra does not install (and NLTK's
alternative needs the ``punkt`` data downloaded at run time, which the kit never does). The Gopher
and C4 rules count words and sentences; a Unicode regex split does that well for space-separated
languages: runs of word characters are words, runs of other non-space characters (``#``,
``...``, ``—``) are symbol tokens, as spaCy would split them.
"""

import re

from datatrove.utils.word_tokenizers import WordTokenizer, simple_span_tokenize

_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


class RegexWordTokenizer(WordTokenizer):
    """Words: ``\\w+`` runs (with inner apostrophes: ``don't`` is one word) and runs of symbols.
    Sentences: split after ``.``, ``!``, ``?`` or ``…`` followed by white space."""

    def __init__(self) -> None:
        super().__init__("regex")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return list(simple_span_tokenize(text, self.sent_tokenize(text)))

    def __eq__(self, other: object) -> bool:  # one per process is as good as any other (datatrove caches by it)
        return isinstance(other, RegexWordTokenizer)

    def __hash__(self) -> int:
        return hash(RegexWordTokenizer)


WORDS = RegexWordTokenizer()
