"""Media throughput per CPU core, and the encoders' share of a tiny training step.

    python benchmarks/media.py [--items 200] [--steps 20]

1. Images per second through decode + transform (one thread, i.e. per CPU core): the tiny
   recipe's case (48 px PNG -> 32 px) and a realistic one (640x480 JPEG -> 224 px for a ViT).
2. Audio-seconds per second through decode (+ resampling) + crop/pad + log-mel, per core: the tiny
   recipe's 0.5 s clips at 16 kHz and 10 s clips at 44.1 kHz (resampled to 16 kHz).
3. The tiny recipe's training step (forward + backward + AdamW, all threads): the whole step, and
   the encoders and projectors' forward + backward alone on the same batches; their ratio is the
   encoders' fraction of the step.

Prints a table; the last line is one JSON object.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from constellation_kit.data.media import clip_samples, decode_audio, decode_image, fit_length, image_transform  # noqa: E402
from constellation_kit.data.generated_media import draw_image  # noqa: E402
from constellation_kit.model.log_mel import LogMelSpectrogram  # noqa: E402

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


def rate(fn, items: list, repeat: int = 2) -> float:
    """Items per second of ``fn`` over ``items`` (best of ``repeat`` passes, after one warm-up item)."""
    fn(items[0])
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def image_rates(root: Path, n: int) -> dict[str, float]:
    rng = random.Random(0)
    small, large = [], []
    for i in range(n):
        path = root / f"s{i}.png"
        draw_image("red", "circle", "left", rng).save(path)
        small.append(path)
        photo = np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        path = root / f"l{i}.jpg"
        Image.fromarray(photo).save(path, quality=90)
        large.append(path)
    tiny = image_transform("vit_tiny_patch16_224", 32, True, {"hflip": 0.0, "scale": [0.8, 1.0]}, TINY_VIT)
    vit = image_transform("vit_small_patch16_224", 224, True)
    return {
        "tiny_png48_to_32_images_per_s": rate(lambda p: tiny(decode_image(p)), small),
        "jpeg640x480_to_224_images_per_s": rate(lambda p: vit(decode_image(p)), large),
    }


def audio_rates(root: Path, n: int) -> dict[str, float]:
    mel = LogMelSpectrogram(80)
    cases = {}
    for name, seconds, sr in (("tiny_0.5s_16k", 0.5, 16_000), ("clip_10s_44k1", 10.0, 44_100)):
        paths = []
        for i in range(n if seconds < 1 else max(4, n // 10)):
            wave = np.random.default_rng(i).standard_normal(int(seconds * sr)).astype(np.float32) * 0.1
            path = root / f"{name}-{i}.wav"
            soundfile.write(path, wave, sr, subtype="PCM_16")
            paths.append(path)
        samples = clip_samples(seconds)

        def load(p: Path) -> torch.Tensor:
            return mel(fit_length(decode_audio(p), samples)[None])

        cases[f"{name}_audio_seconds_per_s"] = rate(load, paths) * seconds
    return cases


def encoder_fraction(steps: int) -> dict[str, float]:
    from constellation_kit.cli import ConstellationCLI

    cli = ConstellationCLI(args=[f"--config={REPO / 'recipes' / 'tiny.yaml'}", "--trainer.logger=false"], run=False)
    dm, model = cli.datamodule, cli.model
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(steps)]
    model.configure_model()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def full(batch: dict) -> None:
        model._loss(batch).backward()
        optimizer.step()
        optimizer.zero_grad()

    def encoders(batch: dict) -> None:
        total = 0
        for modality, encoder in model.encoders.items():
            if batch[modality].shape[0]:
                total = total + model.projectors[modality](encoder(batch[modality])).sum()
        if torch.is_tensor(total):
            total.backward()
        optimizer.zero_grad()

    full_rate, encoder_rate = rate(full, batches), rate(encoders, batches)
    items = sum(b["image"].shape[0] + b["audio"].shape[0] for b in batches) / len(batches)
    return {
        "tiny_step_s": 1 / full_rate,
        "tiny_encoders_s": 1 / encoder_rate,
        "tiny_encoder_fraction": full_rate / encoder_rate,
        "tiny_media_items_per_step": items,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # decode + transform: per CPU core
    with tempfile.TemporaryDirectory() as tmp:
        results = {**image_rates(Path(tmp), args.items), **audio_rates(Path(tmp), args.items)}
    torch.set_num_threads(threads)
    results.update(encoder_fraction(args.steps))
    results = {k: round(v, 4) for k, v in results.items()}
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:>12,.4f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
