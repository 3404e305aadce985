"""Decoding user files: images, audio (with resampling and mixdown), manifests, and the files to skip."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from constellation_kit.data import MediaError, decode_audio, decode_image, image_transform, read_manifest
from constellation_kit.data.media import fit_length
from constellation_kit.errors import ConfigError

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


def write_jpeg(path: Path, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_image_decodes_to_rgb(tmp_path: Path) -> None:
    Image.new("L", (10, 12), 128).save(tmp_path / "grey.png")
    image = decode_image(tmp_path / "grey.png")
    assert image.mode == "RGB" and image.size == (10, 12)


def test_corrupt_jpeg_missing_and_directory_have_reasons(tmp_path: Path) -> None:
    data = write_jpeg(tmp_path / "good.jpg")
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    assert decode_image(tmp_path / "good.jpg").size == (40, 40)
    for name, reason in [("truncated.jpg", "corrupt"), ("garbage.jpg", "corrupt"), ("nowhere.jpg", "missing")]:
        with pytest.raises(MediaError) as error:
            decode_image(tmp_path / name)
        assert error.value.reason == reason
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(MediaError, match="unreadable"):
        decode_image(tmp_path / "folder.png")


def test_audio_is_mixed_to_mono_and_resampled_to_16k(tmp_path: Path) -> None:
    rate = 22_050
    t = np.arange(rate // 2) / rate
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    soundfile.write(tmp_path / "stereo.wav", np.stack([tone, 0 * tone], axis=1), rate)
    waveform = decode_audio(tmp_path / "stereo.wav")
    assert waveform.dtype == torch.float32 and abs(waveform.shape[0] - 8000) <= 1
    # The mean of the channels, still a 440 Hz tone: the spectrum peaks at 440 Hz (2 Hz bins).
    spectrum = torch.fft.rfft(waveform[:8000]).abs()
    assert abs(spectrum.argmax().item() * 16_000 / 8000 - 440) <= 2
    assert 0.45 < waveform.abs().max() < 0.55


def test_truncated_wav_is_corrupt(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "ok.wav", np.zeros(1600, dtype=np.float32), 16_000)
    (tmp_path / "truncated.wav").write_bytes((tmp_path / "ok.wav").read_bytes()[:30])  # cut inside the header
    with pytest.raises(MediaError) as error:
        decode_audio(tmp_path / "truncated.wav")
    assert error.value.reason == "corrupt"


def test_fit_length_crops_and_pads() -> None:
    wave = torch.arange(10.0)
    assert fit_length(wave, 4, offset=3).tolist() == [3, 4, 5, 6]
    assert fit_length(wave, 12).tolist() == list(range(10)) + [0, 0]


def test_image_transform_honours_the_size_and_is_deterministic_for_eval() -> None:
    image = Image.new("RGB", (48, 40), (255, 0, 0))
    eval_transform = image_transform("vit_tiny_patch16_224", 32, training=False, backbone_kwargs=TINY_VIT)
    out = eval_transform(image)
    assert out.shape == (3, 32, 32)  # not timm's pretrained 224: the size is passed as input_size
    torch.testing.assert_close(out, eval_transform(image))
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # vit mean/std 0.5: red -> (1, -1, -1)
    train = image_transform("vit_tiny_patch16_224", 32, training=True, augmentation={"hflip": 0.0}, backbone_kwargs=TINY_VIT)
    assert train(image).shape == (3, 32, 32)
    assert "RandomResizedCrop" in repr(train) and "RandomHorizontalFlip" not in repr(train)


def test_manifest_resolves_paths_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "m.jsonl"
    lines = [{"text": "plain"}, {"image": "img/a.png", "text": "an image"}, {"audio": "../b.wav", "text": "a sound"}]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    items = read_manifest(manifest)
    assert [i.modality for i in items] == ["text", "image", "audio"]
    assert items[1].path == str(tmp_path / "sub" / "img" / "a.png") and items[2].path == str(tmp_path / "b.wav")
    manifest.write_text('{"image": "x.png"}\n')
    with pytest.raises(ConfigError, match="m.jsonl:1"):
        read_manifest(manifest)
