"""Where each token sits in a packed sequence: its document and its position in that document."""

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class SequenceLayout:
    """Per-token bookkeeping for packed sequences, shared by every layer of one forward pass.

    ``document_ids`` (B, T): tokens with equal ids belong to one document; ids only need to be
    distinct within a row. ``positions`` (B, T): each token's index inside its document, so
    RoPE restarts at every document boundary.
    """

    document_ids: torch.Tensor
    positions: torch.Tensor

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
        starts = torch.ones_like(document_ids, dtype=torch.bool)
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        # The start index of the current document, carried forward with a running max.
        start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
        return cls(document_ids=document_ids, positions=index - start_index)

    @cached_property
    def is_single_document(self) -> bool:
        """True when no row holds a document boundary (then plain causal attention is exact).

        Cached: every layer asks, and the answer costs a device-to-host sync.
        """
        return bool((self.document_ids == self.document_ids[:, :1]).all())

    @cached_property
    def document_causal_mask(self) -> torch.Tensor:
        """Boolean mask (B, 1, T, T), True where query i may attend to key j: j <= i, same document.

        Built once per forward pass and shared by every layer.
        """
        seq_len = self.document_ids.shape[1]
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=self.document_ids.device).tril()
        same_document = self.document_ids[:, :, None] == self.document_ids[:, None, :]  # (B, T, T)
        return (causal & same_document).unsqueeze(1)
