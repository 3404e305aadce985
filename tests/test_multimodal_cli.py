"""The multimodal tiny recipe and its text-only ablation, driven through the console script."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from constellation_kit.cli import ConstellationCLI
from conftest import REPO, SHORT, SMALL_DATA, TINY, enter_run_directory, fit_in, tracking_client

TEXT_ONLY = str(REPO / "recipes" / "variants" / "text-only.yaml")
MODALITIES = ("image", "audio")


@pytest.fixture(scope="module")
def text_only_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ConstellationCLI, dict[str, float]]:
    return fit_in(tmp_path_factory.mktemp("text-only"), f"--config={TEXT_ONLY}")


@torch.no_grad()
def caption_scores(cli: ConstellationCLI, modality: str) -> list[tuple[int, list[tuple[tuple[int, ...], float]]]]:
    """Every grounding question of ``modality``, scored the slow way: ``(answer, [(caption, score), ...])``.

    One question, one candidate, one unpadded row at a time: ``placeholders + caption + <|endoftext|>``
    with the item offered through the model's own input (its encoder, if it has one), and the score the
    caption's and end-of-text's log-probabilities summed position by position in float64. Nothing of
    the grounding collate, the batched cross-entropy or the argmax that ``val/<modality>_caption_acc``
    goes through is used.
    """
    model, data = cli.model.eval(), cli.datamodule
    placeholder, count, eos = data.placeholder_ids[modality], data.num_placeholders[modality], data.eos_id
    grounding = data.grounding[modality]
    questions = []
    for choice in grounding.choices:  # all of them: the logged metric has no limit but grounding_items
        media, _ = grounding.bank.load(choice.item)
        scored = []
        for caption in choice.candidates:
            ids = [placeholder] * count + caption + [eos]
            tokens = torch.tensor([ids])  # (1, T)
            batch = {"tokens": tokens, modality: media[None], f"{modality}_mask": tokens == placeholder,
                     f"{modality}_caption": torch.full_like(tokens, -1)}
            logits = model(tokens, torch.zeros_like(tokens), edit_embeddings=model.embedding_editor(batch))  # (1, T, V)
            log_probs = logits[0].double().log_softmax(dim=-1)  # (T, V)
            score = sum(float(log_probs[t - 1, ids[t]]) for t in range(count, len(ids)))  # token t from t - 1
            scored.append((tuple(caption), score))
        questions.append((choice.answer, scored))
    return questions


def accuracy_by_hand(questions: list) -> float:
    """The fraction of questions whose highest-scoring candidate is the answer."""
    right = [max(range(len(scored)), key=lambda k: scored[k][1]) == answer for answer, scored in questions]
    return sum(right) / len(right)


def test_tiny_trains_with_both_encoders(tiny_run) -> None:
    cli, metrics = tiny_run
    assert cli.trainer.global_step == 2
    assert set(cli.model.encoders) == {"image", "audio"}
    assert set(MODALITIES) <= set(cli.datamodule.grounding) and math.isfinite(metrics["val/loss"])


def test_grounding_accuracy_is_the_brute_force_one(tiny_run) -> None:
    """The logged accuracy, from the last validation (after the last step, so the final weights), is
    the one recomputed here question by question: a wrong argmax axis, answer, target mask, repeat of
    the media over candidates, or mean fails this."""
    cli, metrics = tiny_run
    for modality in MODALITIES:
        questions = caption_scores(cli, modality)
        assert len(questions) >= 20, modality  # ~40 held-out items each at SMALL_DATA's sizes
        assert metrics[f"val/{modality}_caption_acc"] == pytest.approx(accuracy_by_hand(questions), abs=1e-6), modality


def test_text_only_variant_trains_without_encoders(text_only_run) -> None:
    cli, metrics = text_only_run
    assert cli.trainer.global_step == 2
    assert len(cli.model.encoders) == 0 and len(cli.model.projectors) == 0
    assert {"val/image_caption_acc", "val/audio_caption_acc"} <= set(metrics)  # still measured: the ablation's chance


def test_text_only_grounding_is_blind_to_the_item_and_at_chance(text_only_run) -> None:
    cli, metrics = text_only_run
    right, asked = 0.0, 0
    for modality in MODALITIES:
        questions = caption_scores(cli, modality)
        assert metrics[f"val/{modality}_caption_acc"] == pytest.approx(accuracy_by_hand(questions), abs=1e-6), modality
        # Blind, shown directly: a candidate caption gets the same score (bit for bit) whichever item is
        # offered with it, so the model's choice is a function of the candidate texts alone.
        by_caption: dict[tuple[int, ...], set[float]] = {}
        for _, scored in questions:
            for caption, score in scored:
                by_caption.setdefault(caption, set()).add(score)
        assert all(len(scores) == 1 for scores in by_caption.values()), modality
        assert len(by_caption) < sum(len(s) for _, s in questions)  # captions recur across items: this compared
        right += accuracy_by_hand(questions) * len(questions)
        asked += len(questions)
    # At chance. The answer's position among the K candidates is drawn uniformly (the data module's
    # _choices) and the distractors uniformly from the held-out captions, so a model blind to the item
    # picks the true caption with probability 1/K, unless it learned which captions are frequent, which
    # 2 steps do not teach. Then the number right is Binomial(n, 1/K): over both modalities
    # (n ≈ 80, K = 4, sd ≈ 0.048) it lies within 3 sd of chance 99.7% of the time.
    chance = 1 / cli.datamodule.caption_choices
    band = 3 * math.sqrt(chance * (1 - chance) / asked)
    assert abs(right / asked - chance) <= band, (right / asked, chance, band, asked)


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
