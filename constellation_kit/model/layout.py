"""Where each token sits in a packed sequence: its document and its position in that document.

A layout is built once per forward pass and shared by every layer, so whatever an attention backend
derives from it (document spans, cu_seqlens, masks) is computed once and cached here.
"""

from dataclasses import dataclass, field
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

    The memoised properties below (spans, groups, cu_seqlens, masks) each cost at most one
    device-to-host sync, paid by the first layer that asks. Compiled blocks never ask for them
    (the attention backends take static-shape paths under ``torch.compile``), except
    ``is_single_document``, which the constructors settle before any block runs.
    """

    document_ids: torch.Tensor
    positions: torch.Tensor
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """Backend-specific derived tensors (e.g. block masks per window), built once per forward."""
    single: bool | None = field(default=None, compare=False)
    """Whether no row holds a document boundary; ``None`` until asked (then one host sync).

    Settled by the constructors, outside any compiled region, so a compiled block reads a Python
    constant (one guard, at most two compiled variants) instead of breaking the graph to sync."""

    @classmethod
    def single_document(cls, batch_size: int, seq_len: int, device: torch.device) -> "SequenceLayout":
        """One document per row: positions ``0..T-1``, the layout of unpacked text."""
        positions = torch.arange(seq_len, device=device).expand(batch_size, seq_len)
        return cls(document_ids=torch.zeros_like(positions), positions=positions, single=True)

    @classmethod
    def from_document_ids(cls, document_ids: torch.Tensor) -> "SequenceLayout":
        """Derive positions from document ids (B, T): each token's offset from its document's start."""
        _, seq_len = document_ids.shape
        index = torch.arange(seq_len, device=document_ids.device).expand_as(document_ids)
        # The start index of the current document, carried forward with a running max.
        start_index = torch.where(cls._starts(document_ids), index, torch.zeros_like(index)).cummax(dim=1).values
        single = None if torch.compiler.is_compiling() else cls._all_single(document_ids)
        return cls(document_ids=document_ids, positions=index - start_index, single=single)

    @staticmethod
    def _all_single(document_ids: torch.Tensor) -> bool:
        return bool((document_ids == document_ids[:, :1]).all())

    def _memo(self, key: str, compute):
        # A dict rather than functools.cached_property: that one enters an RLock, which dynamo
        # cannot trace, and the layout is an input of every compiled block.
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    @staticmethod
    def _starts(document_ids: torch.Tensor) -> torch.Tensor:
        starts = torch.ones_like(document_ids, dtype=torch.bool)  # (B, T): True where a document opens
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        return starts

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.document_ids.shape)

    @property
    def is_single_document(self) -> bool:
        """True when no row holds a document boundary (then plain causal attention is exact).

        Settled once: every layer asks, and the answer costs a device-to-host sync.
        """
        if self.single is None:
            object.__setattr__(self, "single", self._all_single(self.document_ids))  # frozen dataclass
        return self.single

    @property
    def document_lengths(self) -> list[int]:
        """Lengths of every document, row after row (one host sync); they tile the (B * T) tokens."""
        return self._memo("document_lengths", self._document_lengths)

    def _document_lengths(self) -> list[int]:
        batch, seq_len = self.document_ids.shape
        starts = self._starts(self.document_ids).flatten().nonzero().flatten().cpu()
        # Rows are concatenated, so every row's first token is a start and spans never cross rows.
        bounds = torch.cat([starts, torch.tensor([batch * seq_len])])
        return bounds.diff().tolist()

    @property
    def cu_seqlens(self) -> torch.Tensor:
        """(n_documents + 1,) int32 cumulative document lengths over the flattened batch (flash-attn varlen)."""
        return self._memo("cu_seqlens", self._cu_seqlens)

    def _cu_seqlens(self) -> torch.Tensor:
        lengths = torch.tensor([0] + self.document_lengths, dtype=torch.int32)
        return lengths.cumsum(0, dtype=torch.int32).to(self.document_ids.device)

    @property
    def max_seqlen(self) -> int:
        """The longest document, in tokens (flash-attn varlen's ``max_seqlen``)."""
        return max(self.document_lengths)

    @property
    def document_groups(self) -> tuple[list[DocumentGroup], torch.Tensor]:
        """Documents grouped by length, and the permutation that undoes the grouping.

        Returns ``(groups, inverse)``: concatenating every group's flat token indices gives a
        permutation of ``0..B*T-1``; ``inverse`` (B * T,) maps it back to token order.
        """
        return self._memo("document_groups", self._document_groups)

    def _document_groups(self) -> tuple[list[DocumentGroup], torch.Tensor]:
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
        if key not in self.cache or torch.compiler.is_compiling():
            seq_len = self.document_ids.shape[1]
            i = torch.arange(seq_len, device=self.document_ids.device)
            allowed = i[None, :] <= i[:, None]  # (T, T) causal
            if window is not None:
                allowed = allowed & (i[:, None] - i[None, :] < window)
            same_document = self.document_ids[:, :, None] == self.document_ids[:, None, :]  # (B, T, T)
            mask = (allowed & same_document).unsqueeze(1)
            if torch.compiler.is_compiling():
                # Inside a compiled block the mask is part of the graph (inductor fuses it); storing
                # it would change the cache's keys between blocks and recompile every second one.
                return mask
            self.cache[key] = mask
        return self.cache[key]

    @property
    def document_causal_mask(self) -> torch.Tensor:
        """Boolean mask (B, 1, T, T), True where query i may attend to key j: j <= i, same document."""
        return self.allowed(None)
