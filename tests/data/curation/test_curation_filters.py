"""Each quality filter keeps and drops exactly what its docstring says."""

import random

from datatrove.data import Document

from constellation_kit.data.curation import C4LineFilter, LengthFilter, RepetitionFilter, SymbolRatioFilter, WordRatioFilter
from constellation_kit.data.curation.row_kinds import ForRows

RNG = random.Random(0)
WORDS = ["".join(RNG.choice("abcdefghij") for _ in range(5)) for _ in range(400)]


def prose(n: int, per_line: int = 12) -> str:
    """``n`` distinct-ish five-letter words with stop words, in sentences of ``per_line`` words."""
    words = [("the", "and", "of")[i % 3] if i % 4 == 0 else WORDS[i % len(WORDS)] for i in range(n)]
    return "\n".join(" ".join(words[i:i + per_line]) + "." for i in range(0, n, per_line))


def kept(step, text: str, **metadata) -> bool:
    result = step.filter(Document(text=text, id="x", metadata=metadata))
    return result is True or (isinstance(result, tuple) and result[0])


def test_length_counts_words_not_symbols() -> None:
    f = LengthFilter(min_words=5, max_words=10)
    assert not kept(f, "one two three four")
    assert kept(f, "one two three four five")
    assert kept(f, " ".join(["w"] * 10))
    assert not kept(f, " ".join(["w"] * 11))
    assert not kept(f, "one two three four # ... --- !!")  # punctuation-only tokens are not words
    assert kept(LengthFilter(min_words=None, max_words=None), "one")


def test_symbol_ratios() -> None:
    f = SymbolRatioFilter()
    assert kept(f, prose(100))
    assert kept(f, prose(100) + " #tag")                      # 1 hash per ~100 words
    assert not kept(f, prose(40) + " #a #b #c #d #e #f")      # > 0.1 hashes per word
    assert not kept(f, prose(40) + " wait... more... and... so... on... yes...")
    bullets = ["- " + prose(8) for _ in range(10)]
    assert not kept(f, "\n".join(bullets))                    # all lines bullets: > 90%
    assert kept(f, "\n".join(bullets[:9] + [prose(8)]))       # exactly 90%: kept
    lines = [prose(12) for _ in range(10)]
    assert not kept(f, "\n".join([l + ".." for l in lines[:4]] + lines[4:]))   # 4 of 10 end in "...": > 30%
    assert kept(f, "\n".join([l + ".." for l in lines[:3]] + lines[3:]))       # 3 of 10: kept


def test_word_statistics() -> None:
    f = WordRatioFilter()
    assert kept(f, prose(100))
    assert not kept(f, " ".join(["ab", "the", "and"] * 30))                     # mean word length < 3
    assert not kept(f, " ".join(["abcdefghijklmnopqrstuvwxyzabcd", "the", "and"] * 30))        # mean word length > 10
    numbers = " ".join(str(1000 + i) for i in range(80))
    assert not kept(f, numbers + " " + prose(16))                              # < 80% of words with a letter
    assert not kept(f, " ".join(WORDS[:100]))                                  # no stop words
    assert kept(WordRatioFilter(min_stop_words=None), " ".join(WORDS[:100]))


def test_repetition() -> None:
    f = RepetitionFilter()
    assert kept(f, prose(200))
    assert not kept(f, "\n".join(["the same line and of the text again."] * 10))    # duplicated lines
    text = prose(200)
    assert not kept(f, "\n\n".join([text[:300]] * 4))                                # duplicated paragraphs
    assert not kept(f, " ".join(["hello world"] * 50) + " " + prose(40))             # one 2-gram covers > 20%


def test_c4_lines_and_pages() -> None:
    f = C4LineFilter()
    sentences = [f"This is sentence number {w} of the page." for w in WORDS[:6]]
    doc = Document(text="\n".join(sentences + ["Menu Home About", "Enable javascript to see this page."]), id="x")
    assert f.filter(doc) is True
    assert doc.text == "\n".join(sentences)                   # the unpunctuated and javascript lines are gone
    assert not kept(f, "\n".join(sentences[:4]))              # fewer than five sentences
    assert not kept(f, "\n".join(sentences + ["Lorem ipsum dolor sit amet."]))
    assert not kept(f, "\n".join(sentences + ["int main() { return 0; }."]))


def test_caption_filters_apply_to_media_rows_only() -> None:
    on_text, on_captions = ForRows(LengthFilter(min_words=3), media=False), ForRows(LengthFilter(min_words=3), media=True)
    assert not kept(on_text, "two words") and kept(on_text, "two words", image="/x.png")
    assert kept(on_captions, "two words") and not kept(on_captions, "two words", image="/x.png")
    assert on_captions.report_name == "caption_length"
    emptying = ForRows(C4LineFilter(min_num_sentences=-1), media=False)
    assert emptying.filter(Document(text="no terminal punctuation here", id="x")) == (False, "emptied")
