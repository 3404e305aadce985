"""The dense feed-forward sublayer: SwiGLU (Shazeer 2020, https://arxiv.org/abs/2002.05202)."""

import torch
import torch.nn.functional as F
from torch import nn

from constellation_kit.model.layers import Linear


class SwiGLU(nn.Module):
    """``W_down · (silu(W_gate · x) * (W_up · x))``, with gate and up fused in one matmul.

    Input and output (B, T, d_model); the hidden activation is (B, T, hidden_dim).

    Args:
        d_model: model width, supplied by the transformer.
        hidden_dim: inner width. ``None`` means the Llama default: 8/3 · d_model rounded up to
            a multiple of ``multiple_of``, which keeps the parameter count of a 4·d_model MLP.
        multiple_of: rounding for the default ``hidden_dim`` (matmul-friendly sizes).
        bias: whether the projections have biases.
        init_std: standard deviation of the normal initialisation.
    """

    def __init__(
        self,
        d_model: int,
        *,
        hidden_dim: int | None = None,
        multiple_of: int = 64,
        bias: bool = False,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if hidden_dim is None:
            hidden_dim = multiple_of * -(-int(8 * d_model / 3) // multiple_of)
        self.hidden_dim = hidden_dim
        # One (2·hidden, d_model) matmul instead of two: fewer kernel launches, better GEMM shapes.
        self.gate_up_proj = Linear(d_model, 2 * hidden_dim, bias=bias, init_std=init_std)
        self.down_proj = Linear(hidden_dim, d_model, bias=bias, init_std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.down_proj(F.silu(gate) * up)
