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
import math
import random
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from constellation_kit.data.cache import write_atomically

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
PITCHES = {"low": 220.0, "middle": 440.0, "high": 880.0}
SOUNDS = ("tone", "chord", "rhythm")
AUDIO_RATE = 16_000
GENERATOR_VERSION = 2  # bump when the drawings or sounds change: it keys the cache


def draw_image(colour: str, shape: str, position: str, rng: random.Random, size: int = 48) -> Image.Image:
    """One picture: a ``colour`` ``shape`` centred (with jitter) at ``position``."""
    shade = rng.randint(225, 255)
    image = Image.new("RGB", (size, size), (shade, shade, shade))
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[position]
    radius = size * rng.uniform(0.14, 0.2)
    cx = fx * size + rng.uniform(-0.05, 0.05) * size
    cy = fy * size + rng.uniform(-0.05, 0.05) * size
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image


def synthesise_audio(sound: str, pitch: str, rng: random.Random, seconds: float = 0.5) -> np.ndarray:
    """One clip (samples,) at :data:`AUDIO_RATE`: a ``sound`` at ``pitch``."""
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    base = PITCHES[pitch] * 2 ** (rng.uniform(-1, 1) / 12)  # detune by up to a semitone
    if sound == "chord":
        ratios = (1.0, 2 ** (4 / 12), 2 ** (7 / 12))  # root, major third, fifth
        wave = sum(np.sin(2 * math.pi * base * r * t) for r in ratios) / 3
    else:
        wave = np.sin(2 * math.pi * base * t)
    if sound == "rhythm":
        beat = (t * 8).astype(int) % 2 == 0  # four beeps of 1/16 s each half second
        wave = wave * beat
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms fades: no clicks
    return (rng.uniform(0.2, 0.8) * wave * envelope).astype(np.float32)


def generate(directory: Path, num_images: int, num_audio: int, seed: int) -> Path:
    """Write ``num_images`` PNGs, ``num_audio`` WAVs and ``manifest.jsonl`` under ``directory``; return the manifest.

    Deterministic in ``seed``; files are reused when the manifest already exists.
    """
    key = hashlib.sha256(f"v{GENERATOR_VERSION}-{num_images}-{num_audio}-{seed}".encode()).hexdigest()[:12]
    root = directory / f"synthetic-{key}"
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    rng = random.Random(seed)
    lines = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        colour, shape, position = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(POSITIONS))
        relative = f"images/{i:06d}.png"
        draw_image(colour, shape, position, rng).save(root / relative)
        preposition = "on the" if position in ("left", "right") else "at the"
        lines.append({"image": relative, "text": f"a {colour} {shape} {preposition} {position}"})
    for i in range(num_audio):
        sound, pitch = rng.choice(SOUNDS), rng.choice(list(PITCHES))
        relative = f"audio/{i:06d}.wav"
        soundfile.write(root / relative, synthesise_audio(sound, pitch, rng), AUDIO_RATE, subtype="PCM_16")
        lines.append({"audio": relative, "text": f"a {pitch} {sound}"})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    write_atomically(manifest, lambda tmp: tmp.write_text(text))
    return manifest
