"""PyTorch SDPA, arranged so that masked attention stays linear in memory and time on CPU.

Measured on this stack (2-core CPU, torch 2.11): SDPA with ``is_causal=True`` runs a fused kernel
whose memory grows linearly with T, but any explicit mask (documents, a window) sends it through a
path that materialises (T, T) scores: quadratic memory and time. So no (T, T) mask is ever built:

- **global layers** (causal within a document): documents are cut apart along the layout's spans
  and documents of equal length are stacked into one batch, each then plain ``is_causal`` attention.
  Exact (a document never sees another), and every call is the memory-linear fused kernel.
- **local layers** (sliding window W): the sequence is cut into query blocks of W tokens; block c
  attends only key blocks c - 1 and c (all a window of W can reach), under a (W, 2W) mask that
  carries the band and the document test. Cost per block is constant, so the layer is linear in T.

Both are exact rearrangements of the same softmax; tests compare them with the eager reference.
Short sequences (``dense_below`` tokens, default 512) take one call with an explicit mask instead,
where the quadratic term is still smaller than the cost of cutting the batch apart.
"""

import torch
import torch.nn.functional as F

from constellation_kit.model.attention_backends.base import AttentionBackend
from constellation_kit.model.attention_backends.document_op import document_attention
from constellation_kit.model.layout import SequenceLayout


class SDPABackend(AttentionBackend):
    """``F.scaled_dot_product_attention`` on any device, via document grouping or window blocks."""

    name = "sdpa"

    def __init__(self, dense_below: int = 512) -> None:
        # Up to this many tokens a (B, 1, T, T) mask is cheaper than cutting the batch apart: at T = 128
        # it is 16 K booleans a row, against a dozen small kernel calls and a gather/scatter per layer.
        self.dense_below = dense_below

    def unavailable_reason(self, q: torch.Tensor, dropout_p: float) -> str | None:
        return None

    def __call__(self, q, k, v, layout: SequenceLayout, window: int | None, dropout_p: float) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._static(q, k, v, layout, window, dropout_p)
        if window is not None and window >= layout.max_seqlen:
            window = None  # the window reaches every earlier token of every document: plain causal
        if window is None and layout.is_single_document:
            return _sdpa(q, k, v, dropout_p)
        if q.shape[2] <= self.dense_below:
            return _sdpa(q, k, v, dropout_p, layout.allowed(window))
        if window is None:
            return per_document(q, k, v, layout, dropout_p)
        return sliding_window_blocks(q, k, v, layout, window, dropout_p)

    def _static(self, q, k, v, layout: SequenceLayout, window: int | None, dropout_p: float) -> torch.Tensor:
        """The same choices without a host sync, for a compiled block: every shape is static.

        The eager shortcuts that read document lengths (a window longer than every document is
        plain causal) are skipped: the paths below are exact without them.
        """
        if window is None and layout.is_single_document:  # settled before the block: a constant
            return _sdpa(q, k, v, dropout_p)
        if q.shape[2] <= self.dense_below:
            return _sdpa(q, k, v, dropout_p, layout.allowed(window))
        if window is not None:
            return sliding_window_blocks(q, k, v, layout, window, dropout_p)
        if dropout_p == 0.0 and q.device.type == "cpu":
            return document_attention(q, k, v, layout.document_ids)[0]
        # The opaque operator calls SDPA's CPU kernels without dropout; elsewhere (CUDA, where
        # flash-attn is the packed path) or with dropout, pay for a quadratic mask instead.
        return _sdpa(q, k, v, dropout_p, layout.allowed(None))


def _sdpa(q, k, v, dropout_p: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    if mask is None:
        # is_causal keeps SDPA on its fused, memory-linear kernel.
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=True)


def per_document(q, k, v, layout: SequenceLayout, dropout_p: float) -> torch.Tensor:
    """Causal attention within each document: documents of equal length stacked, one call per length."""
    batch, n_heads, seq_len, head_dim = q.shape

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).flatten(0, 1)  # (B*T, heads, hd)

    q_tokens, k_tokens, v_tokens = tokens(q), tokens(k), tokens(v)
    groups, inverse = layout.document_groups
    outputs = []
    for group in groups:

        def stack(x: torch.Tensor) -> torch.Tensor:
            # (n, heads, L, hd): the group's n documents side by side, each its own batch entry
            return x[group.index].view(group.count, group.length, x.shape[1], head_dim).transpose(1, 2)

        y = _sdpa(stack(q_tokens), stack(k_tokens), stack(v_tokens), dropout_p)  # (n, H, L, hd)
        outputs.append(y.transpose(1, 2).reshape(-1, n_heads, head_dim))
    y = torch.cat(outputs)[inverse]  # (B*T, H, hd), back in token order
    return y.view(batch, seq_len, n_heads, head_dim).transpose(1, 2)


def sliding_window_blocks(q, k, v, layout: SequenceLayout, window: int, dropout_p: float) -> torch.Tensor:
    """Sliding-window attention in query blocks of ``window`` tokens against two key blocks each.

    For block c (queries ``cW .. cW + W - 1``) the visible keys lie in ``cW - W .. cW + W - 1``:
    key offset b in that span is key ``cW - W + b``, so query offset a may see it when
    ``0 <= W + a - b < W``, i.e. ``a < b <= W + a``. Keys are padded with W tokens in front (never
    visible: their document id is -1) and the tail is padded to whole blocks (outputs dropped).
    """
    batch, n_heads, seq_len, head_dim = q.shape
    n_blocks = -(-seq_len // window)
    tail = n_blocks * window - seq_len

    q_blocks = F.pad(q, (0, 0, 0, tail)).view(batch, n_heads, n_blocks, window, head_dim)
    q_blocks = q_blocks.transpose(1, 2).flatten(0, 1)  # (B*n, H, W, hd)

    def key_blocks(x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, 0, window, tail))  # (B, Hkv, W + nW, hd)
        spans = padded.unfold(2, 2 * window, window)  # (B, Hkv, n, hd, 2W): overlapping views
        return spans.permute(0, 2, 1, 4, 3).flatten(0, 1)  # (B*n, Hkv, 2W, hd), copied once

    mask = None if torch.compiler.is_compiling() else layout.cache.get(("sdpa_window_mask", window))
    if mask is None:
        # Segment numbers (>= 0) rather than the caller's ids, so -1 can never match a real document.
        segments = SequenceLayout._starts(layout.document_ids).cumsum(1)  # (B, T)
        doc_q = F.pad(segments, (0, tail), value=-1).view(batch, n_blocks, window)
        doc_k = F.pad(segments, (window, tail), value=-1).unfold(1, 2 * window, window)  # (B, n, 2W)
        a = torch.arange(window, device=q.device)[:, None]
        b = torch.arange(2 * window, device=q.device)[None, :]
        band = (b > a) & (b <= window + a)  # (W, 2W)
        mask = band & (doc_q[..., :, None] == doc_k[..., None, :])  # (B, n, W, 2W)
        mask = mask.flatten(0, 1).unsqueeze(1)  # (B*n, 1, W, 2W)
        if not torch.compiler.is_compiling():  # compiled, the mask is part of the graph (see allowed())
            layout.cache[("sdpa_window_mask", window)] = mask

    y = _sdpa(q_blocks, key_blocks(k), key_blocks(v), dropout_p, mask)  # (B*n, H, W, hd)
    y = y.view(batch, n_blocks, n_heads, window, head_dim).transpose(1, 2)
    return y.reshape(batch, n_heads, n_blocks * window, head_dim)[:, :, :seq_len]
