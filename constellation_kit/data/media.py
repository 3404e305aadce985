"""Decoding image and audio files, and the transforms that turn them into model inputs.

Every failure a user's data can produce (a missing path, a file the decoder rejects, a file the
process may not read) is raised as :class:`MediaError` with a short ``reason``, so callers can skip
the item and count it by reason instead of stopping the run.

Audio is decoded with ``soundfile`` (libsndfile): torchaudio 2.9+ no longer decodes files itself
(that moved to torchcodec, which needs FFmpeg's shared libraries installed on the system), while
soundfile's wheels bundle libsndfile for Linux (x86-64, aarch64), macOS and Windows, so it
installs everywhere the kit does with pip alone. It reads WAV, FLAC, OGG/Vorbis and MP3.
"""

import functools
import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import timm
import torch
import torchaudio
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform, resolve_model_data_config

SAMPLE_RATE = 16_000
"""Every audio clip is resampled to 16 kHz mono, the rate of Whisper-style log-mel front ends."""

DEFAULT_MAX_MEDIA_BYTES = 64 * 1024 * 1024
"""64 MiB: far above any image or clip a model of this kind trains on (a 10 s 48 kHz stereo 24-bit
WAV is 3 MB), far below what would stall a loader worker or exhaust its memory."""

SKIP_REASONS = ("missing", "unreadable", "corrupt", "too_large", "decompression_bomb", "non_finite")
"""Every :attr:`MediaError.reason`, in a fixed order: batches count their blanks in this order."""


class MediaError(Exception):
    """A media file that cannot be used; ``reason`` is one of :data:`SKIP_REASONS`:

    ``missing``, ``unreadable`` (a folder, no permission), ``corrupt`` (the decoder rejects it),
    ``too_large`` (over the size cap), ``decompression_bomb`` (an image of more than PIL's
    ``Image.MAX_IMAGE_PIXELS``), ``non_finite`` (audio samples that are NaN or infinite).
    """

    def __init__(self, reason: str, path: str | Path, detail: str = "") -> None:
        super().__init__(f"{reason}: {path}{f' ({detail})' if detail else ''}")
        self.reason = reason
        self.path = str(path)


def _check_readable(path: Path, max_bytes: int | None) -> None:
    if not path.exists():
        raise MediaError("missing", path)
    if not path.is_file():
        raise MediaError("unreadable", path, "not a file")
    # The size from the file system, before a byte is read: a 4 GB "image" never reaches a decoder.
    if max_bytes is not None and (size := path.stat().st_size) > max_bytes:
        raise MediaError("too_large", path, f"{size} bytes > max_media_bytes={max_bytes}")
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise MediaError("unreadable", path, error.strerror or type(error).__name__) from error


def _open(source: "str | Path | bytes", max_bytes: int | None, label: str) -> tuple["str | Path | io.BytesIO", str]:
    """What a decoder opens, and the name its errors give: a checked path, or the bytes themselves.

    Bytes come from shards (:mod:`~constellation_kit.data.shards`), where a media file is stored
    inside the item; they get the same size cap, and an empty string is a missing file.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise MediaError("missing", label, "no bytes stored")
        if max_bytes is not None and len(data) > max_bytes:
            raise MediaError("too_large", label, f"{len(data)} bytes > max_media_bytes={max_bytes}")
        return io.BytesIO(data), label
    path = Path(source)
    _check_readable(path, max_bytes)
    return path, str(path)


def decode_image(
    path: "str | Path | bytes", max_bytes: int | None = DEFAULT_MAX_MEDIA_BYTES, label: str = "<bytes>"
) -> Image.Image:
    """Decode an image file (a path, or its bytes named ``label`` in errors) fully into an RGB PIL
    image (raises :class:`MediaError`).

    Files over ``max_bytes`` (``None``: no cap) are refused unread. Images of more pixels than
    ``PIL.Image.MAX_IMAGE_PIXELS`` are refused from their header: PIL only warns between one and
    two times that limit, and a few hundred bytes of PNG can declare gigapixels, so the warning is
    made an error here whatever the process's warning filters say.
    """
    path, label = _open(path, max_bytes, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decode every byte now: a truncated JPEG fails here, not mid-training
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise MediaError("decompression_bomb", label, str(error)) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise MediaError("corrupt", label, str(error)) from error


def decode_audio(
    path: "str | Path | bytes",
    sample_rate: int = SAMPLE_RATE,
    max_bytes: int | None = DEFAULT_MAX_MEDIA_BYTES,
    label: str = "<bytes>",
) -> torch.Tensor:
    """Decode an audio file (a path, or its bytes named ``label`` in errors) to a mono float32
    waveform (samples,) at ``sample_rate`` (raises :class:`MediaError`).

    Files over ``max_bytes`` (``None``: no cap) are refused unread; a clip with a NaN or infinite
    sample (float WAV/FLAC can hold them) is refused too: one NaN reaching the log-mel front end
    makes the loss NaN.
    """
    path, label = _open(path, max_bytes, label)
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)  # (samples, channels)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as error:
        raise MediaError("corrupt", label, str(error)) from error
    if data.shape[0] == 0:
        raise MediaError("corrupt", label, "no samples")
    if not np.isfinite(data).all():
        raise MediaError("non_finite", label, f"{int((~np.isfinite(data)).sum())} NaN or infinite samples")
    waveform = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))  # mono: average the channels
    if rate != sample_rate:
        waveform = _resampler(rate, sample_rate)(waveform)
    return waveform


@functools.lru_cache(maxsize=16)
def _resampler(source_rate: int, target_rate: int) -> torchaudio.transforms.Resample:
    # The transform computes its windowed-sinc kernel once; the functional form recomputes it per
    # call, which costs more than decoding a short clip.
    return torchaudio.transforms.Resample(source_rate, target_rate)


def fit_length(waveform: torch.Tensor, num_samples: int, offset: int = 0) -> torch.Tensor:
    """Crop (from ``offset``) or zero-pad a waveform (samples,) to exactly ``num_samples``."""
    if waveform.shape[0] >= num_samples:
        return waveform[offset : offset + num_samples]
    return torch.nn.functional.pad(waveform, (0, num_samples - waveform.shape[0]))


def clip_samples(seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples in a clip of ``seconds``."""
    return int(math.ceil(seconds * sample_rate))


def image_transform(
    backbone: str,
    image_size: int,
    training: bool,
    augmentation: dict[str, Any] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> Callable[[Image.Image], torch.Tensor]:
    """timm's transform for ``backbone``: PIL image -> normalised (3, image_size, image_size) tensor.

    The mean, std, interpolation and crop come from the backbone's config
    (``resolve_model_data_config``) so a pretrained backbone sees what it was trained on. timm
    resolves ``input_size`` from the model's *pretrained* config and ignores an overridden
    ``img_size``, so the size is passed explicitly. Training adds random-resized-crop, flip and
    colour jitter, each overridable through ``augmentation`` (``create_transform`` keyword
    arguments: ``hflip``, ``scale``, ``color_jitter``, ``auto_augment``...); evaluation resizes and
    centre-crops deterministically.
    """
    # Built on the meta device: only the config is needed, never the weights.
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=0, **(backbone_kwargs or {}))
    config = resolve_model_data_config(model, args={"input_size": (3, image_size, image_size)})
    extra = dict(augmentation or {}) if training else {}
    return create_transform(**config, is_training=training, **extra)
