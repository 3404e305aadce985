"""The multimodal tiny recipe and its text-only ablation, driven through the console script."""

import json
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from constellation_kit.cli import ConstellationCLI
from conftest import REPO, SMALL_DATA, TINY, tracking_client

TEXT_ONLY = str(REPO / "recipes" / "variants" / "text-only.yaml")
SHORT = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2"]


def final_metrics(cli: ConstellationCLI) -> dict[str, float]:
    return tracking_client().get_run(cli.trainer.logger.run_id).data.metrics


def test_tiny_trains_with_both_encoders_and_reports_grounding(in_tmp_dir: Path) -> None:
    cli = ConstellationCLI(args=["fit", f"--config={TINY}", *SMALL_DATA, *SHORT])
    assert cli.trainer.global_step == 2
    assert set(cli.model.encoders) == {"image", "audio"}
    metrics = final_metrics(cli)
    assert 0.0 <= metrics["val/image_caption_acc"] <= 1.0 and 0.0 <= metrics["val/audio_caption_acc"] <= 1.0


def test_text_only_variant_trains_without_encoders(in_tmp_dir: Path) -> None:
    cli = ConstellationCLI(args=["fit", f"--config={TINY}", f"--config={TEXT_ONLY}", *SMALL_DATA, *SHORT])
    assert cli.trainer.global_step == 2
    assert len(cli.model.encoders) == 0 and len(cli.model.projectors) == 0
    assert "val/image_caption_acc" in final_metrics(cli)  # still measured: the ablation's chance level


def test_a_users_manifest_trains_with_one_line_changed(in_tmp_dir: Path) -> None:
    """Real-looking files (JPEGs of several sizes, 44.1 kHz stereo WAV, FLAC), a missing one, text lines."""
    data = in_tmp_dir / "mydata"
    (data / "photos").mkdir(parents=True)
    (data / "clips").mkdir()
    lines = []
    rng = np.random.default_rng(0)
    for i in range(24):
        size = (64 + 8 * i, 48 + 4 * i)
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(data / "photos" / f"{i}.jpg")
        lines.append({"image": f"photos/{i}.jpg", "text": f"photo number {i % 6}"})
        stereo = 0.1 * rng.standard_normal((44_100 // 4, 2)).astype(np.float32)
        suffix = "flac" if i % 2 else "wav"
        soundfile.write(data / "clips" / f"{i}.{suffix}", stereo, 44_100)
        lines.append({"audio": f"clips/{i}.{suffix}", "text": f"noise burst {i % 5}"})
        lines.append({"text": f"a line of plain text, number {i}, to pack with the corpus."})
    lines.append({"image": "photos/missing.jpg", "text": "gone"})
    manifest = data / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))

    cli = ConstellationCLI(
        args=["fit", f"--config={TINY}", *SMALL_DATA, *SHORT, f"--data.init_args.manifest={manifest}"]
    )
    assert cli.trainer.global_step == 2
    assert dict(cli.datamodule.skipped) == {"missing": 1}
    items = cli.datamodule.train_dataset.bank.items
    assert {i.modality for i in items} == {"image", "audio"} and all(i.path.startswith(str(data)) for i in items)
