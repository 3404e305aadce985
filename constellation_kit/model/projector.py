"""Projectors: map an encoder's tokens into the language model's width."""

from torch import nn


class MLPProjector(nn.Sequential):
    """Encoder tokens (B, N, in_dim) -> (B, N, out_dim) through Linear-GELU-Linear.

    The two-layer MLP connector of LLaVA-1.5 (Liu et al. 2023), which improved on a single linear
    map. Called by the model as ``projector(encoder.out_dim, d_model)``.

    Args:
        in_dim: the encoder's token width.
        out_dim: the language model's ``d_model``.
        hidden_dim: inner width; ``None`` means ``out_dim``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        hidden = hidden_dim or out_dim
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def reset_parameters(self) -> None:
        for layer in (self[0], self[2]):
            layer.reset_parameters()


class LinearProjector(nn.Linear):
    """Encoder tokens (B, N, in_dim) -> (B, N, out_dim) through one linear map (LLaVA 1.0's connector)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim)
