"""Causal self-attention for long contexts: grouped-query heads, QK-norm, local/global layers, RoPE
with context-extension scaling, and packed-document masking on a choice of kernels.

Grouped-query attention (Ainslie et al. 2023, https://arxiv.org/abs/2305.13245): ``n_kv_heads``
key/value heads are shared by groups of ``n_heads // n_kv_heads`` query heads, which shrinks the
KV projections (and a KV cache) without the quality loss of a single shared head.

Local and global layers (Beltagy et al. 2020, https://arxiv.org/abs/2004.05150; Gemma 3, 2025,
https://arxiv.org/abs/2503.19786): a ``layer_pattern`` such as ``"LLLLLG"`` makes five of every six
layers attend only a sliding window of ``window`` tokens (cheap, and a KV cache of W tokens), and
the sixth attend the whole document. Gemma 3 gives the two kinds different RoPE bases (10k local,
1M global) and applies context-extension scaling only to global layers: local layers never see a
distance longer than their window, so there is nothing to extend.

QK-norm (Dehghani et al. 2023, https://arxiv.org/abs/2302.05442; Gemma 3): RMS-normalising each
query and key head before RoPE bounds the logits and keeps large-LR training stable.
"""

from typing import Literal

import torch
from torch import nn

from constellation_kit.errors import ConfigError
from constellation_kit.model.attention_backends import BackendName, select_backend
from constellation_kit.model.kv_cache import KVCache
from constellation_kit.model.layers import Linear
from constellation_kit.model.layout import SequenceLayout
from constellation_kit.model.rope import RopeScaling, RotaryEmbedding

LayerKind = Literal["global", "local"]


class GroupedQueryAttention(nn.Module):
    """Causal multi-head self-attention with ``n_kv_heads`` shared key/value heads.

    Input ``x`` (B, T, d_model) and the batch's :class:`SequenceLayout`; output (B, T, d_model).
    Tokens attend only to earlier tokens of their own document, and in a local layer only to the
    last ``window`` of them (their own included).

    Args:
        d_model: model width, supplied by the transformer.
        layer_index: which block this is, supplied by the transformer; picks the layer's kind
            from ``layer_pattern``.
        n_heads: query heads; must divide ``d_model`` unless ``head_dim`` is given.
        n_kv_heads: key/value heads; must divide ``n_heads``. ``None`` means ``n_heads`` (plain MHA).
        head_dim: per-head width; ``None`` means ``d_model // n_heads``.
        layer_pattern: one letter per layer, repeated over the depth: ``G`` global (full causal),
            ``L`` local (sliding window). ``"G"`` makes every layer global; ``"LLLLLG"`` is Gemma 3's.
        window: tokens a local layer's query sees, its own included (W; flash-attn window W - 1).
        rope_base: RoPE base frequency (theta) of global layers.
        local_rope_base: RoPE base of local layers; ``None`` means ``rope_base``.
        rope_scaling: context-extension scaling of global layers' RoPE (none, linear, ntk, yarn, llama3).
        qk_norm: RMS-normalise each query and key head (learned scale) before RoPE.
        qk_norm_eps: epsilon of those norms (transformers' QK-norm classes use the model's ``rms_norm_eps``).
        backend: attention kernel: ``auto`` (fastest available here, logged), ``flash_attn``,
            ``flex``, ``sdpa`` or ``eager`` (the slow reference).
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
        layer_pattern: str = "G",
        window: int = 4096,
        rope_base: float = 10_000.0,
        local_rope_base: float | None = None,
        rope_scaling: RopeScaling | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        backend: BackendName = "auto",
        dropout: float = 0.0,
        bias: bool = False,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        # Checked before any division: a zero here would otherwise surface as a ZeroDivisionError.
        if n_heads < 1 or n_kv_heads < 1:
            raise ConfigError(
                f"n_heads={n_heads} and n_kv_heads={n_kv_heads} must be at least 1: set the attention's "
                "n_heads to a divisor of d_model (e.g. d_model / 64) and n_kv_heads to a divisor of n_heads"
            )
        if head_dim is None:
            if d_model % n_heads:
                raise ConfigError(
                    f"d_model={d_model} is not divisible by n_heads={n_heads}: choose d_model as a "
                    f"multiple of n_heads (e.g. {n_heads * max(1, round(d_model / n_heads))}), "
                    "or set the attention's head_dim explicitly"
                )
            head_dim = d_model // n_heads
        if head_dim < 2 or head_dim % 2:
            # RoPE rotates (x[:hd/2], x[hd/2:]) pairs: an odd width leaves one channel without a partner.
            raise ConfigError(
                f"head dimension {head_dim} (d_model={d_model} / n_heads={n_heads}, or head_dim) must be even "
                "and at least 2, because RoPE rotates channels in pairs: choose d_model and n_heads so that "
                "d_model / n_heads is even (e.g. a multiple of 64), or set an even head_dim"
            )
        if n_heads % n_kv_heads:
            raise ConfigError(
                f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}: each key/value head "
                "serves a whole group of query heads, so pick n_kv_heads among the divisors of n_heads"
            )
        if not layer_pattern or set(layer_pattern) - {"G", "L"}:
            raise ConfigError(
                f"layer_pattern={layer_pattern!r} must be a non-empty string of G (global) and L (local), "
                "e.g. 'G' for all-global or 'LLLLLG' for five local layers to one global"
            )
        if window < 1:
            raise ConfigError(f"window={window} must be at least 1 token")
        self.layer_index = layer_index
        self.kind: LayerKind = "local" if layer_pattern[layer_index % len(layer_pattern)] == "L" else "global"
        self.window = window if self.kind == "local" else None
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.backend = backend
        self.dropout = dropout
        self.q_proj = Linear(d_model, n_heads * head_dim, bias=bias, init_std=init_std)
        self.kv_proj = Linear(d_model, 2 * n_kv_heads * head_dim, bias=bias, init_std=init_std)
        self.out_proj = Linear(n_heads * head_dim, d_model, bias=bias, init_std=init_std)
        self.q_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps) if qk_norm else None
        if self.kind == "local":
            base = rope_base if local_rope_base is None else local_rope_base
            self.rope = RotaryEmbedding(head_dim, base=base)
        else:
            self.rope = RotaryEmbedding(head_dim, base=rope_base, scaling=rope_scaling)

    def project(self, x: torch.Tensor, layout: SequenceLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, H, T, hd), keys and values (B, Hkv, T, hd), normed and rotated: the kernels' inputs."""
        batch, seq_len, _ = x.shape
        q = self.q_proj(x).view(batch, seq_len, self.n_heads, self.head_dim)  # (B, T, H, hd)
        k, v = self.kv_proj(x).view(batch, seq_len, 2, self.n_kv_heads, self.head_dim).unbind(2)  # (B, T, Hkv, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        cos, sin = self.rope(layout.positions)  # (B, T, hd/2)
        return RotaryEmbedding.rotate(q, cos, sin), RotaryEmbedding.rotate(k, cos, sin), v

    def forward(self, x: torch.Tensor, layout: SequenceLayout, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model). With a ``cache`` (generation), ``x`` holds the new tokens
        only, ``layout`` is the one :meth:`KVCache.extend` returned for them, and their keys and values
        are added to the cache (a local layer keeps only its window)."""
        batch, seq_len, _ = x.shape
        q, k, v = self.project(x, layout)
        dropout_p = self.dropout if self.training else 0.0
        backend = select_backend(self.backend, q, dropout_p)
        if cache is None:
            y = backend(q, k, v, layout, self.window, dropout_p)  # (B, H, T, hd)
        else:
            y = cache.attend(self.layer_index, self.window, backend, q, k, v, layout)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(batch, seq_len, self.n_heads * self.head_dim)  # (B, T, H*hd)
        return self.out_proj(y)

    def attended_context(self, seq_len: int) -> float:
        """Keys a query attends on average over a ``seq_len`` sequence, for FLOP counting.

        The area of the causal mask over ``seq_len`` rows, in the continuous convention of PaLM's
        ``T / 2`` (half the T x T square): a global layer ``T / 2``; a local layer the band of width
        ``W`` under the diagonal, ``T·W - W²/2`` in all, so ``W - W² / (2T)`` per query (``T / 2``
        again when ``W = T``). Packed documents are ignored: their masks are data, not configuration.
        """
        if self.window is None or self.window >= seq_len:
            return seq_len / 2
        return self.window - self.window**2 / (2 * seq_len)

    def extra_repr(self) -> str:
        window = f", window={self.window}" if self.window is not None else ""
        return (
            f"kind={self.kind}{window}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, backend={self.backend}"
        )
