"""Rotary position embeddings (RoPE; Su et al. 2021, https://arxiv.org/abs/2104.09864).

Positions are given per token rather than assumed to be ``0..T-1``, so that a packed
sequence can restart positions at every document boundary.
"""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Computes the cos/sin tables for given positions and rotates queries and keys.

    Shapes: ``positions`` (B, T) int -> ``cos``, ``sin`` (B, T, head_dim // 2).
    ``rotate(x, cos, sin)`` takes ``x`` (B, H, T, head_dim) and returns the same shape.
    """

    def __init__(self, head_dim: int, base: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        # Not persistent: derived from (head_dim, base), so recomputed rather than checkpointed,
        # and reset_parameters() can rebuild it after a meta-device model is materialised.
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.inv_freq.is_meta:
            return
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=self.inv_freq.device)
        self.inv_freq.copy_(1.0 / (self.base ** (exponent / self.head_dim)))

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 angles whatever the autocast: bf16 positions lose integer precision past 256.
        angles = positions.float().unsqueeze(-1) * self.inv_freq.float()  # (B, T, hd/2)
        return angles.cos(), angles.sin()

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate pairs ``(x[..., :hd/2], x[..., hd/2:])`` (the GPT-NeoX / Llama layout)."""
        x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, hd/2) each
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd/2): broadcast over heads
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return rotated.type_as(x)
