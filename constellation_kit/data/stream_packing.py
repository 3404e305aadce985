"""Packing a stream of documents into rows one row at a time, with a state small enough to checkpoint.

:class:`TextPacker` cuts exactly the windows :func:`~constellation_kit.data.packing.pack_documents`
cuts from the same documents (each followed by the end-of-text token, concatenated, windows of
``seq_len + 1`` overlapping by one token), without ever holding more than the documents that
reach into the next window. :class:`MediaPacker` lays media items out whole into rows as
:func:`~constellation_kit.data.media_rows.pack_media_items` does, a row at a time.

Both name what they hold by reference (``Ref``: source, item index, chunk, draw number), so their
state is a few integers per pending document, not tokens: a resumed worker re-reads those items.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from constellation_kit.data.media_rows import MediaRows, item_tokens, pack_media_items
from constellation_kit.data.shards import ShardItem

Ref = tuple[int, int, int, int]
"""A stored item as the stream met it: (source, item index, chunk, draw number)."""


@dataclass
class TextPacker:
    """Documents in, windows of ``seq_len + 1`` tokens out: ``(tokens, document_ids)``, each (seq_len + 1,) int64.

    ``document_ids`` count documents from the first one this packer saw (the same numbering as
    :func:`pack_documents` over the same documents).
    """

    seq_len: int
    eos_id: int
    docs: list[tuple[Ref, np.ndarray]] = field(default_factory=list)
    offset: int = 0
    """Where the next window starts inside the first held document (its end-of-text included)."""
    first_doc: int = 0
    """Document number of ``docs[0]``."""
    _held: int = 0

    def add(self, ref: Ref, tokens: np.ndarray) -> None:
        doc = np.empty(len(tokens) + 1, dtype=np.int64)
        doc[:-1], doc[-1] = tokens, self.eos_id
        self.docs.append((ref, doc))
        self._held += len(doc)

    def pop(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next window, or ``None`` until the held documents fill one (``seq_len + 1`` tokens)."""
        width = self.seq_len + 1
        if self._held - self.offset < width:
            return None
        tokens = np.empty(width, dtype=np.int64)
        documents = np.empty(width, dtype=np.int64)
        filled, start = 0, self.offset
        for j, (_, doc) in enumerate(self.docs):
            take = min(len(doc) - start, width - filled)
            tokens[filled : filled + take] = doc[start : start + take]
            documents[filled : filled + take] = self.first_doc + j
            filled += take
            start = 0
            if filled == width:
                break
        # Advance by seq_len, not seq_len + 1: the window's last token is the next window's first input.
        self.offset += self.seq_len
        while self.docs and self.offset >= len(self.docs[0][1]):
            self.offset -= len(self.docs[0][1])
            self._held -= len(self.docs[0][1])
            self.docs.pop(0)
            self.first_doc += 1
        return tokens, documents

    def state(self) -> dict[str, Any]:
        return {"docs": [list(ref) for ref, _ in self.docs], "offset": self.offset, "first_doc": self.first_doc}

    def restore(self, state: dict[str, Any], read: Callable[[Ref], ShardItem]) -> None:
        self.docs, self._held = [], 0
        for ref in state["docs"]:
            self.add(tuple(ref), read(tuple(ref)).tokens)
        self.offset, self.first_doc = state["offset"], state["first_doc"]


@dataclass
class PendingMedia:
    """A media item waiting in the row being filled."""

    ref: Ref
    item: ShardItem
    ids: list[int]
    num_placeholders: int

    @property
    def modality(self) -> str:
        return self.item.modality


@dataclass
class MediaPacker:
    """Media items in (placeholders + caption + end-of-text, whole), rows of ``seq_len + 1`` out.

    :meth:`add` returns the row the item did not fit into (its items and their
    :class:`~constellation_kit.data.media_rows.MediaRows`), else ``None``; :meth:`flush` the last,
    part-filled row (validation's final one).
    """

    seq_len: int
    eos_id: int
    placeholder_ids: dict[str, int]
    num_placeholders: dict[str, int]
    pending: list[PendingMedia] = field(default_factory=list)

    def _fill(self) -> int:
        return sum(len(p.ids) for p in self.pending)

    def _entry(self, ref: Ref, item: ShardItem) -> PendingMedia:
        n = self.num_placeholders[item.modality]
        ids = item_tokens(self.placeholder_ids[item.modality], n, item.tokens.tolist(), self.eos_id, self.seq_len + 1)
        return PendingMedia(ref, item, ids, n)

    def add(self, ref: Ref, item: ShardItem) -> tuple[list[PendingMedia], MediaRows] | None:
        entry = self._entry(ref, item)
        row = None
        if self.pending and self._fill() + len(entry.ids) > self.seq_len + 1:
            row = self.flush()
        self.pending.append(entry)
        return row

    def flush(self) -> tuple[list[PendingMedia], MediaRows] | None:
        if not self.pending:
            return None
        items, self.pending = self.pending, []
        rows = pack_media_items([p.ids for p in items], [p.num_placeholders for p in items], self.seq_len, self.eos_id)
        return items, rows

    def state(self) -> list[list[int]]:
        return [list(p.ref) for p in self.pending]

    def restore(self, state: list[list[int]], read: Callable[[Ref], ShardItem]) -> None:
        self.pending = [self._entry(tuple(ref), read(tuple(ref))) for ref in state]
