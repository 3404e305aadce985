"""Packing tokenised documents into fixed-length training windows, boundaries recorded."""

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100
"""Target value that cross-entropy skips (PyTorch's default ``ignore_index``)."""


@dataclass
class PackedSequences:
    """N windows of ``seq_len + 1`` tokens cut from the concatenated corpus.

    ``tokens`` (N, seq_len + 1): each document followed by the end-of-text token, concatenated,
    then cut into windows that overlap by one token (the last input's target).
    ``document_ids`` (N, seq_len + 1): the corpus-wide index of the document each token belongs to
    (the end-of-text token belongs to the document it ends).
    """

    tokens: np.ndarray
    document_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


def pack_documents(documents: list[np.ndarray], seq_len: int, eos_id: int) -> PackedSequences:
    """Concatenate ``documents`` (1-D token arrays), each ended by ``eos_id``, into windows.

    No padding is wasted: a long document continues in the next window (its positions restart
    there), and the tail shorter than one window is dropped.
    """
    lengths = np.array([len(d) + 1 for d in documents], dtype=np.int64)
    stream = np.empty(int(lengths.sum()), dtype=np.int32)
    document_index = np.repeat(np.arange(len(documents), dtype=np.int32), lengths)
    offset = 0
    for doc, length in zip(documents, lengths):
        stream[offset : offset + length - 1] = doc
        stream[offset + length - 1] = eos_id
        offset += length
    n_windows = (len(stream) - 1) // seq_len
    if n_windows < 1:
        raise ValueError(f"{len(stream)} tokens cannot fill one window of seq_len={seq_len} (+1 for targets)")
    starts = np.arange(n_windows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]  # (N, T+1)
    return PackedSequences(tokens=stream[starts], document_ids=document_index[starts])


class PackedDataset(Dataset):
    """Map-style view of :class:`PackedSequences` yielding training examples.

    Item ``i`` is a dict of (T,) int64 tensors: ``tokens`` (inputs), ``targets`` (next tokens, with
    :data:`IGNORE_INDEX` wherever the next token starts another document: predicting it would
    need information across the boundary that masking hides), ``document_ids``.
    """

    def __init__(self, packed: PackedSequences) -> None:
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return window_example(self.packed.tokens[index], self.packed.document_ids[index])


def window_example(tokens: np.ndarray, document_ids: np.ndarray) -> dict[str, torch.Tensor]:
    """One window of ``seq_len + 1`` tokens and their document ids as a training example of (T,)
    int64 tensors (see :class:`PackedDataset`)."""
    window = torch.from_numpy(tokens.astype(np.int64))
    documents = torch.from_numpy(document_ids.astype(np.int64))
    targets = window[1:].clone()
    targets[documents[1:] != documents[:-1]] = IGNORE_INDEX
    return {"tokens": window[:-1], "targets": targets, "document_ids": documents[:-1]}
