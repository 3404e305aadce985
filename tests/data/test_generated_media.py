"""The built-in pictures and sounds: every caption is read back from its file by an independent check."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from constellation_kit.data import generated_media
from constellation_kit.data.generated_media import COLOURS, PITCHES, POSITIONS


def read_picture(path: Path) -> str:
    """The caption a picture shows, read from its pixels: the colour nearest the shape's mean, the
    position nearest its centroid, the shape from how much of its bounding box it fills (a square
    all of it, a circle pi/4, a triangle half)."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)  # (H, W, 3)
    shape_mask = np.abs(pixels - pixels[0, 0]).sum(axis=-1) > 30  # the background is one plain grey
    ys, xs = np.nonzero(shape_mask)
    size = pixels.shape[0]
    centroid = np.array([xs.mean() + 0.5, ys.mean() + 0.5]) / size
    mean = pixels[shape_mask].mean(axis=0)
    colour = min(COLOURS, key=lambda c: np.abs(mean - COLOURS[c]).sum())
    fill = shape_mask.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    shape = "square" if fill > 0.92 else "circle" if fill > 0.65 else "triangle"
    position = min(POSITIONS, key=lambda p: np.abs(centroid - np.array(POSITIONS[p])).sum())
    if shape == "triangle":  # its centroid sits a third of the way up from its base, not at its centre
        position = min(POSITIONS, key=lambda p: np.abs(centroid - np.array(POSITIONS[p]) - [0, 0.06]).sum())
    preposition = "on the" if position in ("left", "right") else "at the"
    return f"a {colour} {shape} {preposition} {position}"


def read_sound(path: Path) -> str:
    """The caption a clip sounds like, read from its spectrum and envelope: the lowest strong
    frequency is the pitch (nearest on a log scale), strong frequencies spread over a fifth make a
    chord, and a clip silent a third of the time is a rhythm."""
    samples, rate = soundfile.read(path, dtype="float64")
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    frequencies = np.fft.rfftfreq(len(samples), 1 / rate)
    strong = frequencies[spectrum > 0.5 * spectrum.max()]
    pitch = min(PITCHES, key=lambda p: abs(np.log2(strong.min() / PITCHES[p])))
    frames = samples[: len(samples) // 80 * 80].reshape(-1, 80)  # 5 ms frames
    loudness = np.sqrt((frames**2).mean(axis=1))
    if strong.max() / strong.min() > 1.3:
        sound = "chord"
    elif (loudness < 0.05 * loudness.max()).mean() > 0.3:
        sound = "rhythm"
    else:
        sound = "tone"
    return f"a {pitch} {sound}"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated_media.generate(tmp_path_factory.mktemp("media"), 120, 60, seed=7)


def test_every_caption_is_what_its_file_shows(manifest: Path) -> None:
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sum("image" in line for line in lines) == 120 and sum("audio" in line for line in lines) == 60
    for line in lines:
        if "image" in line:
            assert read_picture(manifest.parent / line["image"]) == line["text"], line
        else:
            assert read_sound(manifest.parent / line["audio"]) == line["text"], line
    # Every kind of caption turns up: the generator draws all of them, not one corner of the space.
    assert len({line["text"].split(" ", 2)[2] for line in lines if "image" in line}) >= 10
    assert {line["text"] for line in lines if "audio" in line} == {f"a {p} {s}" for p in PITCHES for s in generated_media.SOUNDS}


def test_generation_is_deterministic_and_cached(manifest: Path, tmp_path: Path) -> None:
    again = generated_media.generate(tmp_path, 120, 60, seed=7)
    assert again.read_text() == manifest.read_text()
    for relative in ("images/000003.png", "audio/000005.wav"):
        assert (again.parent / relative).read_bytes() == (manifest.parent / relative).read_bytes()
    written = again.stat().st_mtime_ns
    assert generated_media.generate(tmp_path, 120, 60, seed=7) == again and again.stat().st_mtime_ns == written
    other = generated_media.generate(tmp_path, 120, 60, seed=8)
    assert other != again and other.read_text() != again.read_text()


def test_clips_are_16_bit_pcm_at_the_encoders_rate(manifest: Path) -> None:
    info = soundfile.info(manifest.parent / "audio" / "000000.wav")
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16_000, 1, "PCM_16", 8000)
