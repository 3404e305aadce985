"""FlexAttention (PyTorch 2.5+, https://pytorch.org/blog/flexattention/) with document and
sliding-window block masks, on CUDA.

The block mask lets the compiled kernel skip every 128x128 tile that is wholly masked, so packed
documents and windows cost only the tiles they touch. CUDA only: in torch 2.11 FlexAttention has
no backward on CPU.
"""

from functools import cache

import torch

from constellation_kit.model.attention_backends.base import AttentionBackend
from constellation_kit.model.layout import SequenceLayout


@cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # Uncompiled flex_attention materialises the full score matrix; compiled, it is a fused kernel.
    return torch.compile(flex_attention, dynamic=False)


def block_mask(layout: SequenceLayout, window: int | None):
    """The layout's document-causal (and windowed) ``BlockMask``, built once per forward and window."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = ("flex_block_mask", window)
    if key not in layout.cache:
        documents = layout.document_ids
        batch, seq_len = documents.shape

        def mask_mod(b, h, q_idx, kv_idx):
            allowed = (q_idx >= kv_idx) & (documents[b, q_idx] == documents[b, kv_idx])
            if window is not None:
                allowed = allowed & (q_idx - kv_idx < window)
            return allowed

        layout.cache[key] = create_block_mask(mask_mod, batch, None, seq_len, seq_len, device=documents.device)
    return layout.cache[key]


class FlexBackend(AttentionBackend):
    """Compiled ``flex_attention`` with a block mask from :func:`block_mask`."""

    name = "flex"

    def unavailable_reason(self, q: torch.Tensor, dropout_p: float) -> str | None:
        if not q.is_cuda:
            return f"FlexAttention has no backward on {q.device.type} in torch {torch.__version__}; it needs CUDA"
        if dropout_p > 0:
            return "FlexAttention has no attention dropout"
        return None

    def __call__(self, q, k, v, layout: SequenceLayout, window: int | None, dropout_p: float) -> torch.Tensor:
        return _compiled_flex_attention()(q, k, v, block_mask=block_mask(layout, window), enable_gqa=True)
