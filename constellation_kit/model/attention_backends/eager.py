"""The reference: explicit mask, explicit softmax, explicit key/value-head repetition.

Quadratic in T in memory and time; it exists to be obviously correct, and to run on any device
and dtype when nothing else does.
"""

import math

import torch
import torch.nn.functional as F

from constellation_kit.model.attention_backends.base import AttentionBackend
from constellation_kit.model.layout import SequenceLayout


class EagerBackend(AttentionBackend):
    """Plain-PyTorch attention: ``softmax(q k^T / sqrt(hd) + mask) v`` with a (B, 1, T, T) mask."""

    name = "eager"

    def unavailable_reason(self, q: torch.Tensor, dropout_p: float) -> str | None:
        return None

    def __call__(self, q, k, v, layout: SequenceLayout, window: int | None, dropout_p: float) -> torch.Tensor:
        return _attend(q, k, v, layout.allowed(window), dropout_p)

    def attend_cached(self, q, k, v, allowed: torch.Tensor) -> torch.Tensor:
        return _attend(q, k, v, allowed, 0.0)


def _attend(q, k, v, allowed: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Queries (B, H, T, hd) against keys and values (B, Hkv, S, hd) where ``allowed`` (B, 1, T, S)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, S, hd)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return (weights @ v.float()).type_as(q)
