"""FlashAttention-2 varlen (Dao 2023, https://arxiv.org/abs/2307.08691) on CUDA, fp16/bf16.

Packed documents become flash-attn's variable-length batch: the (B * T) tokens are one stream cut
at ``cu_seqlens``, so no work is spent on cross-document pairs, and the sliding window is the
kernel's own ``window_size=(W - 1, 0)``. Grouped-query heads are native (Hkv divides H).
"""

import torch

from constellation_kit.model.attention_backends.base import AttentionBackend
from constellation_kit.model.layout import SequenceLayout

try:  # an import, not a file-exists check: a broken install (ABI mismatch) must fall back too
    from flash_attn import flash_attn_varlen_func
except ImportError:  # not installed, or built against another torch ("undefined symbol")
    flash_attn_varlen_func = None


class FlashAttnBackend(AttentionBackend):
    """flash-attn 2's ``flash_attn_varlen_func`` over the layout's ``cu_seqlens``."""

    name = "flash_attn"

    def unavailable_reason(self, q: torch.Tensor, dropout_p: float) -> str | None:
        if flash_attn_varlen_func is None:
            return "flash-attn is not installed (pip install -e '.[flash]' --no-build-isolation)"
        if not q.is_cuda:
            return f"flash-attn needs a CUDA device, got {q.device.type}"
        if q.dtype not in (torch.float16, torch.bfloat16):
            return f"flash-attn needs fp16 or bf16, got {q.dtype}"
        if q.shape[-1] > 256 or q.shape[-1] % 8:
            return f"flash-attn needs head_dim <= 256 and a multiple of 8, got {q.shape[-1]}"
        return None

    def __call__(self, q, k, v, layout: SequenceLayout, window: int | None, dropout_p: float) -> torch.Tensor:
        batch, n_heads, seq_len, head_dim = q.shape

        def tokens(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(batch * seq_len, x.shape[1], head_dim)  # (B*T, heads, hd)

        y = flash_attn_varlen_func(
            tokens(q), tokens(k), tokens(v),
            cu_seqlens_q=layout.cu_seqlens, cu_seqlens_k=layout.cu_seqlens,
            max_seqlen_q=layout.max_seqlen, max_seqlen_k=layout.max_seqlen,
            dropout_p=dropout_p, causal=True,
            window_size=(-1, -1) if window is None else (window - 1, 0),
        )  # (B*T, H, hd)
        return y.view(batch, seq_len, n_heads, head_dim).transpose(1, 2)
