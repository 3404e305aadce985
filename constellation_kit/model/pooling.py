"""Pooling an encoder's token sequence down to a fixed token budget."""

import math

import torch
import torch.nn.functional as F


def pool_tokens(x: torch.Tensor, num_tokens: int | None, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Average-pool tokens (B, N, D) to (B, num_tokens, D); ``None`` keeps all N.

    With a ``grid`` (rows, cols) of patch tokens and a square ``num_tokens``, pooling is 2-D, so a
    pooled token still covers one region of the image (what "on the left" needs); otherwise it is
    1-D along the sequence (time, for audio). Adaptive pooling splits N into ``num_tokens`` nearly
    equal windows, so any N >= num_tokens works.
    """
    if num_tokens is None or num_tokens == x.shape[1]:
        return x
    if num_tokens > x.shape[1]:
        raise ValueError(f"cannot pool {x.shape[1]} tokens up to num_tokens={num_tokens}: lower num_tokens")
    side = math.isqrt(num_tokens)
    if grid is not None and side * side == num_tokens and grid[0] * grid[1] == x.shape[1]:
        b, _, d = x.shape
        image = x.transpose(1, 2).reshape(b, d, *grid)  # (B, D, rows, cols)
        return F.adaptive_avg_pool2d(image, side).flatten(2).transpose(1, 2)  # (B, side*side, D)
    return F.adaptive_avg_pool1d(x.transpose(1, 2), num_tokens).transpose(1, 2)  # (B, num_tokens, D)
