"""Where each token sits in a packed sequence: its document and its position in that document.

A layout is built once per forward pass and shared by every layer, so whatever an attention backend
derives from it (document spans, cu_seqlens, masks) is computed once and cached here.
"""

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch


@dataclass(frozen=True)
class DocumentGroup:
    """All documents of one length ``length``, gathered for one batched attention call.

    ``index`` (n * length,) int64: flat token indices into the (B * T) tokens, document after
    document, so ``x.flatten(0, 1)[index].view(n, length, ...)`` stacks the n documents.
    """

    length: int
    index: torch.Tensor

    @property
    def count(self) -> int:
        return self.index.numel() // self.length


@dataclass(frozen=True)
class SequenceLayout:
    """Per-token bookkeeping for packed sequences, shared by every layer of one forward pass.

    ``document_ids`` (B, T): tokens with equal ids belong to one document; ids only need to be
    distinct within a row, and a document is a contiguous run of equal ids. ``positions`` (B, T):
    each token's index inside its document, so RoPE restarts at every document boundary.

    The cached properties below (spans, groups, cu_seqlens, masks) each cost at most one
    device-to-host sync, paid by the first layer that asks.
    """

    document_ids: torch.Tensor
    positions: torch.Tensor
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """Backend-specific derived tensors (e.g. block masks per window), built once per forward."""

    @classmethod
    def single_document(cls, batch_size: int, seq_len: int, device: torch.device) -> "SequenceLayout":
        """One document per row: positions ``0..T-1``, the layout of unpacked text."""
        positions = torch.arange(seq_len, device=device).expand(batch_size, seq_len)
        return cls(document_ids=torch.zeros_like(positions), positions=positions)

    @classmethod
    def from_document_ids(cls, document_ids: torch.Tensor) -> "SequenceLayout":
        """Derive positions from document ids (B, T): each token's offset from its document's start."""
        _, seq_len = document_ids.shape
        index = torch.arange(seq_len, device=document_ids.device).expand_as(document_ids)
        # The start index of the current document, carried forward with a running max.
        start_index = torch.where(cls._starts(document_ids), index, torch.zeros_like(index)).cummax(dim=1).values
        return cls(document_ids=document_ids, positions=index - start_index)

    @staticmethod
    def _starts(document_ids: torch.Tensor) -> torch.Tensor:
        starts = torch.ones_like(document_ids, dtype=torch.bool)  # (B, T): True where a document opens
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        return starts

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.document_ids.shape)

    @cached_property
    def is_single_document(self) -> bool:
        """True when no row holds a document boundary (then plain causal attention is exact).

        Cached: every layer asks, and the answer costs a device-to-host sync.
        """
        return bool((self.document_ids == self.document_ids[:, :1]).all())

    @cached_property
    def document_lengths(self) -> list[int]:
        """Lengths of every document, row after row (one host sync); they tile the (B * T) tokens."""
        batch, seq_len = self.document_ids.shape
        starts = self._starts(self.document_ids).flatten().nonzero().flatten().cpu()
        # Rows are concatenated, so every row's first token is a start and spans never cross rows.
        bounds = torch.cat([starts, torch.tensor([batch * seq_len])])
        return bounds.diff().tolist()

    @cached_property
    def cu_seqlens(self) -> torch.Tensor:
        """(n_documents + 1,) int32 cumulative document lengths over the flattened batch (flash-attn varlen)."""
        lengths = torch.tensor([0] + self.document_lengths, dtype=torch.int32)
        return lengths.cumsum(0, dtype=torch.int32).to(self.document_ids.device)

    @cached_property
    def max_seqlen(self) -> int:
        """The longest document, in tokens (flash-attn varlen's ``max_seqlen``)."""
        return max(self.document_lengths)

    @cached_property
    def document_groups(self) -> tuple[list[DocumentGroup], torch.Tensor]:
        """Documents grouped by length, and the permutation that undoes the grouping.

        Returns ``(groups, inverse)``: concatenating every group's flat token indices gives a
        permutation of ``0..B*T-1``; ``inverse`` (B * T,) maps it back to token order.
        """
        device = self.document_ids.device
        by_length: dict[int, list[int]] = {}
        offset = 0
        for length in self.document_lengths:
            by_length.setdefault(length, []).append(offset)
            offset += length
        groups, order = [], []
        for length, starts in sorted(by_length.items()):
            index = (torch.tensor(starts)[:, None] + torch.arange(length)[None, :]).flatten()
            order.append(index)
            groups.append(DocumentGroup(length=length, index=index.to(device)))
        inverse = torch.empty(offset, dtype=torch.long)
        inverse[torch.cat(order)] = torch.arange(offset)
        return groups, inverse.to(device)

    def allowed(self, window: int | None = None) -> torch.Tensor:
        """Boolean mask (B, 1, T, T), True where query i may attend to key j.

        ``j <= i``, same document and, for a sliding window of W tokens, ``i - j < W``. Quadratic in T:
        the eager reference and SDPA on short sequences use it; the scalable paths never build it.
        """
        key = ("allowed", window)
        if key not in self.cache:
            seq_len = self.document_ids.shape[1]
            i = torch.arange(seq_len, device=self.document_ids.device)
            allowed = i[None, :] <= i[:, None]  # (T, T) causal
            if window is not None:
                allowed = allowed & (i[:, None] - i[None, :] < window)
            same_document = self.document_ids[:, :, None] == self.document_ids[:, None, :]  # (B, T, T)
            self.cache[key] = (allowed & same_document).unsqueeze(1)
        return self.cache[key]

    @property
    def document_causal_mask(self) -> torch.Tensor:
        """Boolean mask (B, 1, T, T), True where query i may attend to key j: j <= i, same document."""
        return self.allowed(None)
