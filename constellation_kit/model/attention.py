"""Causal self-attention with grouped-query heads and RoPE, on PyTorch SDPA.

Grouped-query attention (Ainslie et al. 2023, https://arxiv.org/abs/2305.13245): ``n_kv_heads``
key/value heads are shared by groups of ``n_heads // n_kv_heads`` query heads, which shrinks the
KV projections (and a KV cache) without the quality loss of a single shared head.
"""

import torch
import torch.nn.functional as F
from torch import nn

from constellation_kit.errors import ConfigError
from constellation_kit.model.layers import Linear
from constellation_kit.model.layout import SequenceLayout
from constellation_kit.model.rope import RotaryEmbedding


class GroupedQueryAttention(nn.Module):
    """Causal multi-head self-attention with ``n_kv_heads`` shared key/value heads.

    Input ``x`` (B, T, d_model) and the batch's :class:`SequenceLayout`; output (B, T, d_model).
    Tokens attend only to earlier tokens of their own document.

    Args:
        d_model: model width, supplied by the transformer.
        layer_index: which block this is, supplied by the transformer (unused here; layer-dependent
            attention kinds use it).
        n_heads: query heads; must divide ``d_model`` unless ``head_dim`` is given.
        n_kv_heads: key/value heads; must divide ``n_heads``. ``None`` means ``n_heads`` (plain MHA).
        head_dim: per-head width; ``None`` means ``d_model // n_heads``.
        rope_base: RoPE base frequency (theta).
        dropout: attention-probability dropout during training.
        bias: whether the projections have biases.
        init_std: standard deviation of the normal initialisation of the projections.
    """

    def __init__(
        self,
        d_model: int,
        layer_index: int = 0,
        *,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        rope_base: float = 10_000.0,
        dropout: float = 0.0,
        bias: bool = False,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if head_dim is None:
            if d_model % n_heads:
                raise ConfigError(
                    f"d_model={d_model} is not divisible by n_heads={n_heads}: choose d_model as a "
                    f"multiple of n_heads (e.g. {n_heads * max(1, round(d_model / n_heads))}), "
                    "or set the attention's head_dim explicitly"
                )
            head_dim = d_model // n_heads
        if n_heads % n_kv_heads:
            raise ConfigError(
                f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}: each key/value head "
                "serves a whole group of query heads, so pick n_kv_heads among the divisors of n_heads"
            )
        self.layer_index = layer_index
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.dropout = dropout
        self.q_proj = Linear(d_model, n_heads * head_dim, bias=bias, init_std=init_std)
        self.kv_proj = Linear(d_model, 2 * n_kv_heads * head_dim, bias=bias, init_std=init_std)
        self.out_proj = Linear(n_heads * head_dim, d_model, bias=bias, init_std=init_std)
        self.rope = RotaryEmbedding(head_dim, base=rope_base)

    def forward(self, x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        q = self.q_proj(x).view(batch, seq_len, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k, v = (
            self.kv_proj(x)
            .view(batch, seq_len, 2, self.n_kv_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)  # (2, B, Hkv, T, hd)
            .unbind(0)
        )
        cos, sin = self.rope(layout.positions)  # (B, T, hd/2)
        q, k = RotaryEmbedding.rotate(q, cos, sin), RotaryEmbedding.rotate(k, cos, sin)
        dropout_p = self.dropout if self.training else 0.0
        if layout.is_single_document:
            # is_causal keeps SDPA on its memory-efficient kernels; an explicit mask would not.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=layout.document_causal_mask, dropout_p=dropout_p, enable_gqa=True
            )
        y = y.transpose(1, 2).reshape(batch, seq_len, self.n_heads * self.head_dim)  # (B, T, H*hd)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}"

