"""Built-in multimodal data: generated pictures and synthesised sounds, each with its caption.

The items are written to real files (PNG and WAV) with a JSONL manifest, and read back through the
same decode path as a user's data, so the tiny recipe exercises everything a real run does. Each
caption is fully determined by the file's content, which is what makes the grounding check
meaningful: without the encoders every caption is equally likely, so picking the right one among
K candidates is a 1/K guess.

- images: a red/green/blue/yellow circle/square/triangle on the left/right/top/bottom of a
  plain background, with jittered size and offset: "a blue triangle at the top" (48 captions);
- audio: a tone, a chord (major triad) or a rhythm (four short beeps) at a low/middle/high
  pitch, detuned and at a random loudness: "a high chord" (9 captions). Clips are written at
  16 kHz, the encoders' rate: resampling costs more than decoding (see benchmarks/media.py), and
  the built-in data is there to train fast; the resampling path has its own test.
"""

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from constellation_kit.data.cache import exclusive

log = logging.getLogger(__name__)

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
PITCHES = {"low": 220.0, "middle": 440.0, "high": 880.0}
SOUNDS = ("tone", "chord", "rhythm")
AUDIO_RATE = 16_000
GENERATOR_VERSION = 3  # bump when the drawings or sounds change: it keys the cache


def draw_images(
    colours: np.ndarray, shapes: np.ndarray, positions: np.ndarray, rng: np.random.Generator, size: int = 48
) -> np.ndarray:
    """Pictures (N, size, size, 3) uint8: picture i a ``COLOURS[colours[i]]`` ``SHAPES[shapes[i]]``
    centred (with jitter) at ``POSITIONS[positions[i]]``, each argument an (N,) index array.

    Rasterised for all N at once with numpy (a pixel is inside when its centre is), about fifty
    times faster than drawing them one by one with PIL.
    """
    n = len(shapes)
    shade = rng.integers(225, 256, n)  # the plain background: a light grey
    radius = size * rng.uniform(0.14, 0.2, n)
    centre = np.array(list(POSITIONS.values()))[positions] * size + rng.uniform(-0.05, 0.05, (n, 2)) * size  # (N, 2)
    fill = np.clip(np.array(list(COLOURS.values()))[colours] + rng.integers(-20, 21, (n, 3)), 0, 255)  # (N, 3)
    pixel = np.arange(size) + 0.5
    dx = pixel[None, None, :] - centre[:, 0, None, None]  # (N, 1, size): x grows to the right
    dy = pixel[None, :, None] - centre[:, 1, None, None]  # (N, size, 1): y grows downwards
    r = radius[:, None, None]
    inside = {
        "circle": dx**2 + dy**2 <= r**2,
        "square": (np.abs(dx) <= r) & (np.abs(dy) <= r),
        "triangle": (dy <= r) & (np.abs(dx) <= (dy + r) / 2),  # apex at the top, base 2r wide at the bottom
    }
    mask = np.zeros((n, size, size), dtype=bool)
    for index, shape in enumerate(SHAPES):
        chosen = shapes == index
        mask[chosen] = np.broadcast_to(inside[shape], (n, size, size))[chosen]
    return np.where(mask[..., None], fill[:, None, None, :], shade[:, None, None, None]).astype(np.uint8)


def draw_image(colour: str, shape: str, position: str, rng: random.Random, size: int = 48) -> Image.Image:
    """One picture (see :func:`draw_images`): a ``colour`` ``shape`` centred (with jitter) at ``position``."""
    pixels = draw_images(
        np.array([list(COLOURS).index(colour)]), np.array([SHAPES.index(shape)]),
        np.array([list(POSITIONS).index(position)]), np.random.default_rng(rng.getrandbits(64)), size,
    )
    return Image.fromarray(pixels[0])


def synthesise_audio(sounds: np.ndarray, pitches: np.ndarray, rng: np.random.Generator, seconds: float = 0.5) -> np.ndarray:
    """Clips (N, samples) float32 at :data:`AUDIO_RATE`: clip i a ``SOUNDS[sounds[i]]`` at
    ``PITCHES[pitches[i]]``, each argument an (N,) index array."""
    n = len(sounds)
    t = (np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE).astype(np.float32)  # (S,)
    base = np.array(list(PITCHES.values()))[pitches] * 2 ** (rng.uniform(-1, 1, n) / 12)  # detune by up to a semitone
    # float32 throughout: a phase of up to ~3000 rad is still exact to 3e-4 rad, and half the memory traffic.
    phase = (2 * math.pi * base[:, None]).astype(np.float32) * t[None, :]  # (N, S)
    wave = np.sin(phase)
    chord = np.flatnonzero(sounds == SOUNDS.index("chord"))
    for ratio in (2 ** (4 / 12), 2 ** (7 / 12)):  # the major third and fifth over the root
        wave[chord] += np.sin(phase[chord] * np.float32(ratio))
    wave[chord] /= 3
    beat = (t * 8).astype(int) % 2 == 0  # four beeps of 1/16 s each half second
    wave[sounds == SOUNDS.index("rhythm")] *= beat
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01).astype(np.float32)  # 10 ms fades: no clicks
    return rng.uniform(0.2, 0.8, n).astype(np.float32)[:, None] * wave * envelope


def write_wav(path: Path, samples: np.ndarray) -> None:
    """A mono 16-bit PCM WAV of ``samples`` (S,) in [-1, 1] at :data:`AUDIO_RATE`.

    The standard library's writer: a tenth of soundfile's per-file cost for these short clips; the
    files are read back with soundfile, as the user's are.
    """
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(AUDIO_RATE)
        out.writeframes(np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def generate(directory: Path, num_images: int, num_audio: int, seed: int) -> Path:
    """Write ``num_images`` PNGs, ``num_audio`` WAVs and ``manifest.jsonl`` under ``directory``; return the manifest.

    Deterministic in ``seed``; files are reused when the manifest already exists. One process
    generates (the others wait on the cache lock), into a hidden folder renamed into place when
    complete, so no process ever sees a half-written picture: a rank that decoded one would skip
    it while the others kept it, and the ranks would disagree on the data.
    """
    key = hashlib.sha256(f"v{GENERATOR_VERSION}-{num_images}-{num_audio}-{seed}".encode()).hexdigest()[:12]
    root = directory / f"synthetic-{key}"
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    with exclusive(directory / f"synthetic-{key}.lock", "the built-in media"):
        if manifest.is_file():  # generated by another process while this one waited
            return manifest
        if root.exists():
            shutil.rmtree(root)  # a partial folder left by a process killed mid-write (before the rename)
        log.info("Generating %d built-in pictures and %d sounds in %s", num_images, num_audio, root)
        staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".synthetic-{key}.", suffix=".tmp"))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by the users of a machine
        try:
            _write(staging, num_images, num_audio, seed)
            try:
                os.rename(staging, root)  # atomic: the folder appears complete, manifest included
            except OSError:
                if not manifest.is_file():  # not a rival node's complete copy (no flock on its file system)
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return manifest


CHUNK = 128  # items rasterised or synthesised at once: arrays of a few MB, which stay in cache


def _write(root: Path, num_images: int, num_audio: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for first in range(0, num_images, CHUNK):
        n = min(CHUNK, num_images - first)
        colours, shapes, positions = (rng.integers(0, k, n) for k in (len(COLOURS), len(SHAPES), len(POSITIONS)))
        for i, pixels in enumerate(draw_images(colours, shapes, positions, rng), start=first):
            relative = f"images/{i:06d}.png"
            Image.fromarray(pixels).save(root / relative, compress_level=1)  # flat pictures: level 1 is as small
            colour, shape = list(COLOURS)[colours[i - first]], SHAPES[shapes[i - first]]
            position = list(POSITIONS)[positions[i - first]]
            preposition = "on the" if position in ("left", "right") else "at the"
            lines.append({"image": relative, "text": f"a {colour} {shape} {preposition} {position}"})
    for first in range(0, num_audio, CHUNK):
        n = min(CHUNK, num_audio - first)
        sounds, pitches = rng.integers(0, len(SOUNDS), n), rng.integers(0, len(PITCHES), n)
        for i, samples in enumerate(synthesise_audio(sounds, pitches, rng), start=first):
            relative = f"audio/{i:06d}.wav"
            write_wav(root / relative, samples)
            lines.append({"audio": relative, "text": f"a {list(PITCHES)[pitches[i - first]]} {SOUNDS[sounds[i - first]]}"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
