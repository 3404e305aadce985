"""A corpus with known contents: distinct documents, planted exact and near duplicates, junk, media rows.

Every planted thing is counted here, so a test can say exactly what ``report.json`` must hold.
"""

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

STOP = ["the", "of", "and", "to", "that", "have", "with", "be"]


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Word ``n``-grams of lower-cased text: the reference the MinHash estimate is checked against."""
    words = text.lower().split()
    return set(zip(*[words[i:] for i in range(n)]))


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def make_document(rng: random.Random, vocabulary: list[str], words: int = 150) -> str:
    """Prose-like: random pseudo-words with stop words mixed in; passes every default Gopher rule."""
    chosen = [rng.choice(STOP) if rng.random() < 0.25 else rng.choice(vocabulary) for _ in range(words)]
    lines = [" ".join(chosen[i:i + 15]) + "." for i in range(0, words, 15)]
    return "\n".join(lines)


def near_duplicate(rng: random.Random, text: str, vocabulary: list[str], changes: int = 3) -> str:
    """``text`` with ``changes`` words replaced, spread apart: Jaccard of 5-gram shingles above 0.8."""
    lines = text.split("\n")
    words = " ".join(lines).split()
    step = len(words) // changes
    for i in range(changes):
        words[i * step + rng.randrange(step)] = rng.choice(vocabulary) + "x"
    return " ".join(words)


@dataclass
class PlantedCorpus:
    root: Path
    inputs: list[str]
    distinct: list[str]                       # kept: one copy each
    near_pairs: list[tuple[str, str]]         # (original, variant): one of each pair removed
    exact_copies: int                         # removed as exact duplicates
    skipped: dict[str, int]
    filtered: dict[str, int]
    media_rows_kept: int
    documents_in: int = 0
    notes: dict = field(default_factory=dict)

    @property
    def documents_out(self) -> int:
        return len(self.distinct) + len(self.near_pairs) + self.media_rows_kept


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def build(root: Path, seed: int = 0, distinct: int = 40, near: int = 30, exact: int = 12) -> PlantedCorpus:
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 8))) for _ in range(3000)]
    originals = [make_document(rng, vocabulary) for _ in range(distinct + near)]
    variants = [near_duplicate(rng, originals[distinct + i], vocabulary) for i in range(near)]
    copies = [rng.choice(originals[:distinct]) for _ in range(exact)]
    root.mkdir(parents=True, exist_ok=True)

    # web.jsonl: originals, variants, exact copies, and junk lines of every kind.
    lines = [json.dumps({"text": t}).encode() for t in originals + variants + copies]
    junk = {
        "invalid_utf8": [b'{"text": "caf\xe9 au lait ' + b"word " * 60 + b'"}'],
        "truncated_json": [b'{"text": "cut off in the mid', b'{"text": "another one'],
        "invalid_json": [b"not json at all"],
        "no_text": [b'{"title": "no text field"}', b'[1, 2, 3]'],
        "empty": [b'{"text": "   "}', b'{"text": ""}'],
        "binary": [json.dumps({"text": "\x00\x01\x02" + "junk " * 80}).encode()],
    }
    filtered = {
        "length": [json.dumps({"text": "the of and too short"}).encode()],
        "symbols": [json.dumps({"text": " ".join(["#tag the and of"] * 40)}).encode()],
        "words": [json.dumps({"text": " ".join(str(rng.randrange(10**6)) for _ in range(120)) + " the and"}).encode()],
        "repetition": [json.dumps({"text": "\n".join(["the cat and the dog went to the market with a hat."] * 30)}).encode()],
    }
    all_lines = lines + [l for group in junk.values() for l in group] + [l for group in filtered.values() for l in group]
    rng.shuffle(all_lines)
    (root / "web.jsonl").write_bytes(b"\n".join(all_lines) + b"\n")

    # notes/: plain text files, one document each; one is not UTF-8, one is binary junk.
    notes = root / "notes"
    notes.mkdir(exist_ok=True)
    extra = [make_document(rng, vocabulary) for _ in range(3)]
    for i, text in enumerate(extra):
        (notes / f"note{i}.txt").write_text(text)
    (notes / "latin1.txt").write_bytes(("caf\xe9 " * 80).encode("latin-1"))
    (notes / "blob.md").write_bytes(bytes(range(128)) * 8)  # valid UTF-8, but NULs and control bytes
    junk["invalid_utf8"].append(b"")
    junk["binary"].append(b"")

    # media/: a captioned manifest: two pictures and a clip that decode, one row repeated exactly,
    # one missing file, one corrupt file, one caption too short.
    media = root / "media"
    media.mkdir(exist_ok=True)
    (media / "red.png").write_bytes(_png((255, 0, 0)))
    (media / "blue.png").write_bytes(_png((0, 0, 255)))
    (media / "broken.png").write_bytes(_png((0, 255, 0))[:30])
    soundfile.write(media / "beep.wav", np.sin(np.linspace(0, 400, 8000)).astype("float32"), 16000)
    rows = [
        {"image": "red.png", "text": "a red square on a plain background"},
        {"image": "blue.png", "text": "a red square on a plain background"},   # same caption, other picture: kept
        {"audio": "beep.wav", "text": "a short steady beep"},
        {"image": "red.png", "text": "a red square on a plain background"},    # exact duplicate row
        {"image": "missing.png", "text": "a picture that is not there"},
        {"image": "broken.png", "text": "a picture cut short"},
        {"image": "blue.png", "text": "blue"},                                  # caption of one word
    ]
    (media / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    skipped = {reason: len(group) for reason, group in junk.items()}
    skipped.update({"media_missing": 1, "media_corrupt": 1})
    filtered_counts = {name: len(group) for name, group in filtered.items()}
    filtered_counts["caption_length"] = 1
    corpus = PlantedCorpus(
        root=root, inputs=[str(root / "web.jsonl"), str(notes), str(media / "manifest.jsonl")],
        distinct=originals[:distinct] + extra, near_pairs=list(zip(originals[distinct:], variants)),
        exact_copies=exact + 1, skipped=skipped, filtered=filtered_counts, media_rows_kept=3,
    )
    corpus.documents_in = (len(corpus.distinct) + 2 * near + exact + sum(skipped.values())
                           + sum(filtered_counts.values()) + len(rows) - 2 - 1)
    return corpus
