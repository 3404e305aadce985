"""The audio front end: log-mel spectrograms in the Whisper convention."""

import torch
import torchaudio
from torch import nn


class LogMelSpectrogram(nn.Module):
    """Waveforms (B, samples) at ``sample_rate`` -> log-mel features (B, n_mels, frames).

    Whisper's front end (Radford et al. 2022; ``whisper/audio.py::log_mel_spectrogram``): a 25 ms
    Hann window (``n_fft`` 400) every 10 ms (``hop_length`` 160) at 16 kHz, power spectrum, Slaney
    mel filters (librosa's default, which Whisper's filter bank comes from), the last frame dropped,
    then ``log10(max(mel, 1e-10))``, floored at 8 (i.e. 80 dB) below each clip's maximum, and scaled
    by ``(x + 4) / 4`` to roughly [-1, 1]. ``frames = samples // hop_length``.

    Args:
        n_mels: mel bins: 80 (Whisper up to large-v2) or 128 (large-v3).
        sample_rate: the rate the waveforms are at.
        n_fft: STFT size and window length.
        hop_length: samples between frames.
    """

    def __init__(self, n_mels: int = 80, sample_rate: int = 16_000, n_fft: int = 400, hop_length: int = 160) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.mel = _mel_transform(n_mels, sample_rate, n_fft, hop_length)

    def reset_parameters(self) -> None:
        """Recompute the window and filter-bank buffers (needed after a meta-device build and ``to_empty``)."""
        fresh = _mel_transform(self.n_mels, self.mel.sample_rate, self.mel.n_fft, self.mel.hop_length)
        with torch.no_grad():
            self.mel.spectrogram.window.copy_(fresh.spectrogram.window)
            self.mel.mel_scale.fb.copy_(fresh.mel_scale.fb)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        # The STFT runs in fp32 whatever the autocast: power spectra overflow and underflow in bf16.
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            mel = self.mel(waveforms.float())[..., :-1]  # (B, n_mels, frames); Whisper drops the last frame
            log_spec = mel.clamp(min=1e-10).log10()
            peak = log_spec.amax(dim=(-2, -1), keepdim=True)
            log_spec = torch.maximum(log_spec, peak - 8.0)
            return (log_spec + 4.0) / 4.0


def _mel_transform(n_mels: int, sample_rate: int, n_fft: int, hop_length: int) -> torchaudio.transforms.MelSpectrogram:
    """torchaudio's mel spectrogram, its buffers computed on the CPU then moved to the default device.

    Computing the filter bank needs real values (torchaudio indexes with a boolean mask, which the
    meta device cannot do), so a meta-device build computes it on the CPU and moves the result.
    """
    with torch.device("cpu"):
        transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
            power=2.0, norm="slaney", mel_scale="slaney",
        )
    return transform.to(torch.get_default_device())
