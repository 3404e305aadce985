"""Laying media items out as token rows: placeholders for the encoder's tokens, then the caption.

One item becomes ``[<|image|>] * image_tokens + caption + <|endoftext|>`` (likewise for audio):
the model writes the encoder's projected embeddings over the placeholders and learns to predict
the caption from them. Items are packed whole into rows of ``seq_len + 1`` tokens (never split
across rows, since the encoder's tokens for one item must all sit in one row), each item its own
document so attention and RoPE restart per item; what is left of a row is padding.
"""

from dataclasses import dataclass, field

import numpy as np

from constellation_kit.errors import ConfigError


@dataclass(frozen=True)
class Span:
    """Where one media item sits in its row: ``item`` indexes the split's item list."""

    item: int
    start: int
    num_placeholders: int
    caption_len: int  # caption tokens plus the end-of-text token


@dataclass
class MediaRows:
    """R packed rows: ``tokens``/``document_ids`` (R, seq_len + 1), ``predictable`` (R, seq_len + 1)
    marks tokens that may be targets (caption and end-of-text, not placeholders or padding);
    ``spans[r]`` lists the items of row r in order."""

    tokens: np.ndarray
    document_ids: np.ndarray
    predictable: np.ndarray
    spans: list[list[Span]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


def item_tokens(placeholder_id: int, num_placeholders: int, caption: list[int], eos_id: int, limit: int) -> list[int]:
    """The token ids of one item, the caption truncated so the item fits ``limit`` tokens."""
    if num_placeholders + 2 > limit:
        raise ConfigError(
            f"{num_placeholders} placeholder tokens plus a caption do not fit seq_len={limit - 1}: "
            "raise data.init_args.seq_len or lower the encoder's num_tokens"
        )
    return [placeholder_id] * num_placeholders + caption[: limit - num_placeholders - 1] + [eos_id]


def pack_media_items(items: list[list[int]], num_placeholders: list[int], seq_len: int, pad_id: int) -> MediaRows:
    """Greedily pack item token lists (each already fitting ``seq_len + 1``) into rows, in order."""
    width = seq_len + 1
    rows: list[list[Span]] = [[]]
    fill = 0
    for index, ids in enumerate(items):
        if fill + len(ids) > width:
            rows.append([])
            fill = 0
        rows[-1].append(Span(index, fill, num_placeholders[index], len(ids) - num_placeholders[index]))
        fill += len(ids)
    if not rows[-1]:
        rows.pop()
    tokens = np.full((len(rows), width), pad_id, dtype=np.int64)
    document_ids = np.zeros((len(rows), width), dtype=np.int64)
    predictable = np.zeros((len(rows), width), dtype=bool)
    for r, spans in enumerate(rows):
        for d, span in enumerate(spans):
            end = span.start + span.num_placeholders + span.caption_len
            tokens[r, span.start : end] = items[span.item]
            document_ids[r, span.start : end] = d
            predictable[r, span.start + span.num_placeholders : end] = True
        document_ids[r, (spans[-1].start + spans[-1].num_placeholders + spans[-1].caption_len) :] = len(spans)
    return MediaRows(tokens, document_ids, predictable, rows)
