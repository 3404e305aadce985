"""The audio encoder: log-mel front end, a strided conv stem, then bidirectional transformer layers."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from constellation_kit.errors import ConfigError
from constellation_kit.model.log_mel import LogMelSpectrogram
from constellation_kit.model.pooling import pool_tokens

FrontEndFactory = Callable[[int], nn.Module]
"""Builds the waveform -> (B, n_mels, frames) front end from ``n_mels``."""


class EncoderBlock(nn.Module):
    """A pre-norm, non-causal transformer block: (B, N, D) -> (B, N, D). Every frame sees the whole clip."""

    def __init__(self, width: int, n_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(b, n, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, hd)
        attended = F.scaled_dot_product_attention(q, k, v)  # no mask: bidirectional
        x = x + self.out(attended.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.mlp_norm(x))


def sinusoids(length: int, width: int, device: torch.device) -> torch.Tensor:
    """Fixed sinusoidal positions (length, width), Whisper's encoder positional embedding (Vaswani et al. 2017)."""
    half = width // 2
    inv_timescales = torch.exp(-math.log(10_000) / (half - 1) * torch.arange(half, device=device, dtype=torch.float32))
    scaled = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class AudioEncoder(nn.Module):
    """Waveforms (B, samples) at 16 kHz -> audio tokens (B, N, width).

    The Whisper encoder's shape (Radford et al. 2022, Fig. 1) at any size: log-mel features
    (B, n_mels, F), two 3-wide convolutions with GELU, the second with stride 2 (F -> ceil(F/2)
    frames of 20 ms), fixed sinusoidal positions, ``n_layers`` bidirectional pre-norm transformer
    blocks, a final LayerNorm, then optional average pooling over time to ``num_tokens``.

    Args:
        width: channels of the stem and width of the transformer (``out_dim``).
        n_layers: transformer blocks after the stem.
        n_heads: attention heads (must divide ``width``).
        n_mels: mel bins the front end produces.
        num_tokens: pool the frames to this many tokens; ``None`` keeps one per 20 ms.
        front_end: factory for the waveform -> log-mel module, called with ``n_mels``.
        init_from: a transformers Whisper checkpoint directory on local disk whose encoder has this
            shape (``d_model`` = width, ``encoder_layers``, ``encoder_attention_heads``,
            ``num_mel_bins``, ``encoder_ffn_dim`` = 4 x width); loaded at construction and again
            after a meta-device build is materialised (see :mod:`constellation_kit.interop.encoders`).
    """

    def __init__(
        self,
        width: int = 256,
        n_layers: int = 2,
        n_heads: int = 4,
        n_mels: int = 80,
        num_tokens: int | None = None,
        front_end: FrontEndFactory = LogMelSpectrogram,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        if width % n_heads or width % 2:
            raise ConfigError(f"audio encoder width={width} must be even and divisible by n_heads={n_heads}")
        self.out_dim = width
        self.num_tokens = num_tokens
        self.front_end = front_end(n_mels)
        self.conv1 = nn.Conv1d(n_mels, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1)
        self.blocks = nn.ModuleList(EncoderBlock(width, n_heads) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(width)
        self.init_from = init_from
        if init_from is not None and not self.conv1.weight.is_meta:
            self._load_pretrained()

    def _load_pretrained(self) -> None:
        from constellation_kit.interop.encoders import load_whisper_encoder  # lazy: safetensors only needed here

        load_whisper_encoder(self, self.init_from)

    def reset_parameters(self) -> None:
        """Every submodule here owns its own ``reset_parameters``; this re-runs them (after ``to_empty``)."""
        for module in self.modules():
            if module is not self and callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
        if self.init_from is not None:
            self._load_pretrained()

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.encode_features(self.front_end(waveforms))

    def encode_features(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel features (B, n_mels, F) -> audio tokens (B, N, width): everything after the front end."""
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))  # (B, width, F)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, ceil(F/2), width)
        x = x + sinusoids(x.shape[1], x.shape[2], x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return pool_tokens(self.final_norm(x), self.num_tokens)  # (B, N, width)
