"""Rotary position embeddings (RoPE; Su et al. 2021, https://arxiv.org/abs/2104.09864), with
context-extension scaling.

Positions are given per token rather than assumed to be ``0..T-1``, so that a packed sequence can
restart positions at every document boundary.

Scaling rewrites the per-pair inverse frequencies ``inv_freq[i] = base ** (-2i / d)`` (and, for YaRN,
the magnitude of cos/sin) so that a model trained on ``original_max_position`` tokens can read
``factor`` times more:

- ``linear`` (position interpolation; Chen et al. 2023, https://arxiv.org/abs/2306.15595):
  every frequency divided by ``factor``.
- ``ntk`` (NTK-aware; bloc97 2023, https://www.reddit.com/r/LocalLLaMA/comments/14lz7j5): the base
  grows to ``base * factor ** (d / (d - 2))``, which leaves the fastest pair alone and interpolates
  the slowest one by exactly ``factor``.
- ``yarn`` (Peng et al. 2023, https://arxiv.org/abs/2309.00071, eq. 17-20): "NTK-by-parts" ramp in
  the number of rotations ``r = L / wavelength`` a pair makes over the original context: pairs with
  ``r > beta_fast`` keep their frequency, pairs with ``r < beta_slow`` are interpolated by ``factor``,
  and a linear ramp blends in between; logits are tempered by ``sqrt(1/t) = 0.1 ln(factor) + 1``
  (applied to both cos and sin, so to q and k, as the reference implementation does).
- ``llama3`` (Meta Llama 3.1, ``apply_scaling`` in meta-llama/llama-models): wavelengths shorter
  than ``L / high_freq_factor`` kept, longer than ``L / low_freq_factor`` divided by ``factor``,
  smoothly interpolated in between.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from constellation_kit.errors import ConfigError

ScalingKind = Literal["none", "linear", "ntk", "yarn", "llama3"]


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE's frequencies are stretched for contexts longer than the training length.

    Only the fields a ``kind`` names are read (see the module docstring for the formulas).
    """

    kind: ScalingKind = "none"
    """Which published scaling: none, linear, ntk, yarn or llama3."""
    factor: float = 1.0
    """Context extension ratio s = new context / ``original_max_position``."""
    original_max_position: int = 2048
    """The context length the model was (pre-)trained on (YaRN's and Llama 3's L)."""
    beta_fast: float = 32.0
    """YaRN: pairs rotating more than this many times over L are never interpolated."""
    beta_slow: float = 1.0
    """YaRN: pairs rotating fewer than this many times over L are fully interpolated."""
    attention_factor: float | None = None
    """YaRN: cos/sin magnitude; ``None`` means the paper's ``0.1 ln(factor) + 1``."""
    low_freq_factor: float = 1.0
    """Llama 3: wavelengths above ``L / low_freq_factor`` are divided by ``factor``."""
    high_freq_factor: float = 4.0
    """Llama 3: wavelengths below ``L / high_freq_factor`` are kept."""

    def __post_init__(self) -> None:
        if self.kind != "none" and self.factor < 1.0:
            raise ConfigError(f"rope scaling factor={self.factor} must be >= 1 (it is new context / trained context)")
        if self.kind == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(
                f"llama3 rope scaling needs high_freq_factor > low_freq_factor, got "
                f"{self.high_freq_factor} <= {self.low_freq_factor}"
            )


def rope_frequencies(head_dim: int, base: float, scaling: RopeScaling | None = None) -> tuple[torch.Tensor, float]:
    """The (head_dim // 2,) fp32 inverse frequencies and the cos/sin magnitude for a scaling."""
    scaling = scaling or RopeScaling()
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim  # 2i / d
    if scaling.kind == "ntk":
        base = base * scaling.factor ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / base**exponent  # (hd/2,)
    magnitude = 1.0
    if scaling.kind == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.kind == "yarn":
        inv_freq, magnitude = _yarn(inv_freq, head_dim, base, scaling)
    elif scaling.kind == "llama3":
        inv_freq = _llama3(inv_freq, scaling)
    return inv_freq.float(), magnitude


def _yarn(inv_freq: torch.Tensor, head_dim: int, base: float, s: RopeScaling) -> tuple[torch.Tensor, float]:
    # The pair index whose wavelength makes `rotations` turns over L (YaRN eq. 17 solved for d):
    # r(d) = L / (2 pi base^(2d/|D|))  =>  d = |D| ln(L / (2 pi r)) / (2 ln base).
    def pair_for(rotations: float) -> float:
        return head_dim * math.log(s.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(pair_for(s.beta_fast)), 0)
    high = min(math.ceil(pair_for(s.beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001  # the reference's guard against a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1.0 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate by `factor`
    scaled = inv_freq / s.factor * (1 - keep) + inv_freq * keep
    magnitude = s.attention_factor if s.attention_factor is not None else 0.1 * math.log(s.factor) + 1.0
    return scaled, magnitude


def _llama3(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    low_freq_wavelen = s.original_max_position / s.low_freq_factor
    high_freq_wavelen = s.original_max_position / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, blended, out)


class RotaryEmbedding(nn.Module):
    """Computes the cos/sin tables for given positions and rotates queries and keys.

    Shapes: ``positions`` (B, T) int -> ``cos``, ``sin`` (B, T, head_dim // 2).
    ``rotate(x, cos, sin)`` takes ``x`` (B, H, T, head_dim) and returns the same shape.

    Args:
        head_dim: per-head width (even).
        base: RoPE base frequency (theta).
        scaling: context-extension scaling; ``None`` is plain RoPE.
    """

    def __init__(self, head_dim: int, base: float = 10_000.0, scaling: RopeScaling | None = None) -> None:
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim (it rotates channels in pairs), got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self.scaling = scaling or RopeScaling()
        self.magnitude = 1.0
        # Not persistent: derived from (head_dim, base, scaling), so recomputed rather than checkpointed
        # (a checkpoint can then be evaluated under another scaling), and reset_parameters() can
        # rebuild it after a meta-device model is materialised.
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        inv_freq, self.magnitude = rope_frequencies(self.head_dim, self.base, self.scaling)
        if not self.inv_freq.is_meta:
            self.inv_freq.copy_(inv_freq)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 angles whatever the autocast: bf16 positions lose integer precision past 256.
        angles = positions.float().unsqueeze(-1) * self.inv_freq.float()  # (B, T, hd/2)
        if self.magnitude == 1.0:
            return angles.cos(), angles.sin()
        return angles.cos() * self.magnitude, angles.sin() * self.magnitude

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate pairs ``(x[..., :hd/2], x[..., hd/2:])`` (the GPT-NeoX / Llama layout)."""
        x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, hd/2) each
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd/2): broadcast over heads
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return rotated.type_as(x)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, scaling={self.scaling.kind}"
