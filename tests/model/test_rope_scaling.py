"""RoPE context-extension scaling against reference values computed here, pair by pair, in plain Python.

The references follow the published code: YaRN's ``find_correction_range``/``linear_ramp_mask``
(jquesnelle/yarn, the paper's reference implementation) and Meta's Llama 3.1 ``apply_scaling``.
"""

import math

import pytest
import torch

from constellation_kit.errors import ConfigError
from constellation_kit.model import RopeScaling, RotaryEmbedding
from constellation_kit.model.rope import rope_frequencies


def plain(head_dim: int, base: float) -> list[float]:
    return [1.0 / base ** (2 * i / head_dim) for i in range(head_dim // 2)]


def yarn_reference(head_dim: int, base: float, factor: float, original: int, beta_fast=32.0, beta_slow=1.0):
    def correction_dim(rotations: float) -> float:
        return (head_dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    out = []
    for i, freq in enumerate(plain(head_dim, base)):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        extrapolation = 1.0 - ramp
        out.append(freq / factor * (1 - extrapolation) + freq * extrapolation)
    return out, 0.1 * math.log(factor) + 1.0


def llama3_reference(head_dim: int, base: float, factor: float, low_freq_factor: float, high_freq_factor: float, old: int):
    low_freq_wavelen, high_freq_wavelen = old / low_freq_factor, old / high_freq_factor
    out = []
    for freq in plain(head_dim, base):
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(freq)
        elif wavelen > low_freq_wavelen:
            out.append(freq / factor)
        else:
            smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


def test_none_reproduces_plain_rope() -> None:
    inv_freq, magnitude = rope_frequencies(16, 500.0, RopeScaling("none", factor=4.0))
    torch.testing.assert_close(inv_freq, torch.tensor(plain(16, 500.0)))
    assert magnitude == 1.0
    rope = RotaryEmbedding(16, base=500.0, scaling=RopeScaling())
    # The rotation itself, as complex multiplication x * e^{i m theta} on (x[:hd/2], x[hd/2:]) pairs.
    x = torch.randn(1, 1, 5, 16)
    positions = torch.arange(5)[None]
    cos, sin = rope(positions)
    z = torch.complex(x[..., :8].double(), x[..., 8:].double()) * torch.polar(
        torch.ones(5, 8, dtype=torch.float64), positions[0, :, None].double() * torch.tensor(plain(16, 500.0), dtype=torch.float64)
    )
    torch.testing.assert_close(RotaryEmbedding.rotate(x, cos, sin), torch.cat([z.real, z.imag], -1).float())


def test_linear_is_position_interpolation() -> None:
    scaled = RotaryEmbedding(8, scaling=RopeScaling("linear", factor=4.0))
    plain_rope = RotaryEmbedding(8)
    positions = torch.arange(0, 40, 4)[None]
    for a, b in zip(scaled(positions), plain_rope(positions // 4)):  # position m under s=4 is m/4 unscaled
        torch.testing.assert_close(a, b)


def test_ntk_aware_grows_the_base() -> None:
    head_dim, base, factor = 16, 10_000.0, 8.0
    inv_freq, _ = rope_frequencies(head_dim, base, RopeScaling("ntk", factor=factor))
    new_base = base * factor ** (head_dim / (head_dim - 2))
    torch.testing.assert_close(inv_freq, torch.tensor(plain(head_dim, new_base)))
    # The defining property: the fastest pair untouched, the slowest interpolated by exactly `factor`.
    assert inv_freq[0].item() == 1.0
    assert inv_freq[-1].item() == pytest.approx(plain(head_dim, base)[-1] / factor, rel=1e-6)


@pytest.mark.parametrize(("head_dim", "base", "factor", "original"), [(64, 10_000.0, 4.0, 2048), (16, 10_000.0, 2.0, 128), (128, 500_000.0, 16.0, 8192)])
def test_yarn_matches_reference(head_dim: int, base: float, factor: float, original: int) -> None:
    inv_freq, magnitude = rope_frequencies(head_dim, base, RopeScaling("yarn", factor=factor, original_max_position=original))
    expected, expected_magnitude = yarn_reference(head_dim, base, factor, original)
    torch.testing.assert_close(inv_freq, torch.tensor(expected))
    assert magnitude == pytest.approx(expected_magnitude)
    # Limits: fast pairs kept, slow pairs interpolated by `factor`.
    assert inv_freq[0].item() == 1.0
    assert inv_freq[-1].item() == pytest.approx(plain(head_dim, base)[-1] / factor, rel=1e-6)


def test_yarn_tempers_cos_and_sin() -> None:
    rope = RotaryEmbedding(16, scaling=RopeScaling("yarn", factor=4.0, original_max_position=64))
    cos, sin = rope(torch.arange(10)[None])
    torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, (0.1 * math.log(4.0) + 1.0) ** 2))


def test_llama3_matches_reference_for_llama31_8b() -> None:
    # Llama 3.1's published rope_scaling: factor 8, low 1, high 4, original context 8192, theta 500000.
    scaling = RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)
    inv_freq, _ = rope_frequencies(128, 500_000.0, scaling)
    expected = llama3_reference(128, 500_000.0, 8.0, 1.0, 4.0, 8192)
    torch.testing.assert_close(inv_freq, torch.tensor(expected))
    unscaled = plain(128, 500_000.0)
    kept = sum(a == pytest.approx(b) for a, b in zip(inv_freq.tolist(), unscaled))
    divided = sum(a == pytest.approx(b / 8) for a, b in zip(inv_freq.tolist(), unscaled))
    assert kept > 0 and divided > 0 and kept + divided < 64  # all three regimes occur


def test_scaling_survives_meta_materialisation() -> None:
    scaling = RopeScaling("yarn", factor=2.0, original_max_position=128)
    with torch.device("meta"):
        rope = RotaryEmbedding(16, scaling=scaling)
    rope.to_empty(device="cpu")
    rope.reset_parameters()
    torch.testing.assert_close(rope.inv_freq, torch.tensor(yarn_reference(16, 10_000.0, 2.0, 128)[0]))


def test_bad_factor_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="factor=0.5"):
        RopeScaling("yarn", factor=0.5)
