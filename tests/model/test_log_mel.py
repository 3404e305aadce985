"""The Whisper log-mel front end against an independent NumPy computation of the same formula."""

import numpy as np
import torch

from constellation_kit.model import LogMelSpectrogram


def slaney_hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale (librosa's default, so Whisper's): linear below 1 kHz, log above.
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    linear = mel * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


def reference_log_mel(wave: np.ndarray, n_mels: int, sr: int = 16_000, n_fft: int = 400, hop: int = 160) -> np.ndarray:
    """Whisper's log_mel_spectrogram, written out: framing, DFT, filter bank, log, floor, scale."""
    padded = np.pad(wave, n_fft // 2, mode="reflect")  # torch.stft(center=True)
    n_frames = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([padded[i * hop : i * hop + n_fft] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (frames, n_fft/2 + 1)
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    hz = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(np.array(0.0)), slaney_hz_to_mel(np.array(sr / 2)), n_mels + 2))
    filters = np.zeros((n_mels, len(fft_freqs)))
    for m in range(n_mels):
        rising = (fft_freqs - hz[m]) / (hz[m + 1] - hz[m])
        falling = (hz[m + 2] - fft_freqs) / (hz[m + 2] - hz[m + 1])
        filters[m] = np.maximum(0, np.minimum(rising, falling)) * 2.0 / (hz[m + 2] - hz[m])  # Slaney area norm
    mel = (filters @ power.T)[:, :-1]  # (n_mels, frames - 1): Whisper drops the last frame
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def test_log_mel_matches_the_formula_for_80_and_128_bins() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16_000
    # A chirp-ish signal plus noise: energy across the band and a quiet tail to exercise the floor.
    wave = 0.5 * np.sin(2 * np.pi * (300 + 2000 * t) * t) + 0.05 * rng.standard_normal(len(t))
    wave[3000:] *= 1e-6
    for n_mels in (80, 128):
        ours = LogMelSpectrogram(n_mels=n_mels)(torch.tensor(wave, dtype=torch.float32)[None])[0].numpy()
        reference = reference_log_mel(wave, n_mels)
        assert ours.shape == reference.shape == (n_mels, 4000 // 160)
        np.testing.assert_allclose(ours, reference, atol=2e-4)


def test_each_clip_is_floored_against_its_own_peak() -> None:
    loud, quiet = torch.randn(1600), 1e-3 * torch.randn(1600)
    batch = LogMelSpectrogram()(torch.stack([loud, quiet]))
    alone = LogMelSpectrogram()(quiet[None])
    torch.testing.assert_close(batch[1], alone[0])
    assert batch.amax(dim=(1, 2)).sub(batch.amin(dim=(1, 2))).max() <= 2.0 + 1e-6  # 8 decades / 4
