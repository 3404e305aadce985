"""Decoding user files: images, audio (with resampling and mixdown), manifests, and the files to skip."""

import io
import json
import struct
import zlib
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


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR declaring ``width`` x ``height`` RGB pixels, and IEND: a decompression
    bomb's front, as small as the real thing (a few hundred bytes declaring gigapixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 20_000], ids=["warning-range", "error-range"])
def test_a_decompression_bomb_is_skipped_under_its_own_reason(tmp_path: Path, side: int) -> None:
    # 10k x 10k = 1e8 pixels: over PIL's MAX_IMAGE_PIXELS (8.9e7), where PIL only warns; 20k x 20k is
    # over twice it, where PIL raises DecompressionBombError. Both are refused before any pixel is decoded.
    (tmp_path / "bomb.png").write_bytes(png_header(side, side))
    with pytest.raises(MediaError) as error:
        decode_image(tmp_path / "bomb.png")
    assert error.value.reason == "decompression_bomb"


def test_files_over_the_size_cap_are_skipped_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: 65 MiB of nothing on disk; decoding it would say "corrupt"
        f.truncate(65 * 1024 * 1024)
    with pytest.raises(MediaError) as error:
        decode_image(big)
    assert error.value.reason == "too_large" and "max_media_bytes=67108864" in str(error.value)
    soundfile.write(tmp_path / "clip.wav", np.zeros(1600, dtype=np.float32), 16_000)
    size = (tmp_path / "clip.wav").stat().st_size
    with pytest.raises(MediaError, match="too_large"):
        decode_audio(tmp_path / "clip.wav", max_bytes=size - 1)
    assert decode_audio(tmp_path / "clip.wav", max_bytes=size).shape == (1600,)  # at the cap: fine
    assert decode_image(write_png(tmp_path / "small.png"), max_bytes=None).size == (4, 4)  # None: no cap


def write_png(path: Path) -> Path:
    Image.new("RGB", (4, 4)).save(path)
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_audio_with_non_finite_samples_is_skipped(tmp_path: Path, bad: float) -> None:
    samples = np.full(1600, 0.1, dtype=np.float32)
    samples[::100] = bad
    soundfile.write(tmp_path / "bad.wav", samples, 16_000, subtype="FLOAT")  # float WAV keeps NaN and inf
    with pytest.raises(MediaError) as error:
        decode_audio(tmp_path / "bad.wav")
    assert error.value.reason == "non_finite" and "16 NaN or infinite" in str(error.value)


@pytest.mark.parametrize("value", ["3", "[\"a.png\", \"b.png\"]", "null"])
def test_a_media_path_that_is_not_a_string_names_file_and_line(tmp_path: Path, value: str) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(f'{{"text": "fine"}}\n{{"image": {value}, "text": "a picture"}}\n')
    with pytest.raises(ConfigError, match=r'm\.jsonl:2: "image" must be a path string'):
        read_manifest(manifest)


def test_manifest_paths_are_what_path_resolve_gives_through_symlinks_and_dots(tmp_path: Path) -> None:
    # Folders are resolved once per manifest (8000 resolves were half a second of a run's start-up):
    # every path must still be exactly Path.resolve's.
    (tmp_path / "data" / "img").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data" / "img" / "a.png").write_bytes(b"")
    (tmp_path / "elsewhere" / "b.png").write_bytes(b"")
    (tmp_path / "data" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "data" / "img" / "alias.png").symlink_to(tmp_path / "elsewhere" / "b.png")
    written = ["img/a.png", "img/../img/a.png", "linked/b.png", "img/alias.png", "gone/c.png", "img/gone.png",
               "../elsewhere/b.png", "linked/../img/a.png", str(tmp_path / "elsewhere" / "b.png")]
    manifest = tmp_path / "data" / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": w, "text": "x"}) + "\n" for w in written))
    items = read_manifest(manifest)
    assert [i.path for i in items] == [str((manifest.parent / w).resolve()) for w in written]
    assert items[3].path == str(tmp_path / "elsewhere" / "b.png")  # a symlinked file: its target
    assert [i.name for i in items] == written


def test_a_manifest_that_is_not_utf8_names_file_line_and_byte(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes('{"text": "fine"}\n{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"m\.jsonl:2: not UTF-8 \(byte 30 is 0xe9\)"):
        read_manifest(manifest)
