"""The multimodal DataModule: bad files skipped and counted, batches laid out as the model expects."""

import json
from collections import Counter
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

import lightning as L
from lightning.pytorch.loggers import Logger

from constellation_kit.data import ByteLevelBPE, MultimodalDataModule
from constellation_kit.data.media import SKIP_REASONS
from constellation_kit.data.multimodal_datamodule import AUDIO_TOKEN, IMAGE_TOKEN
from constellation_kit.data.packing import IGNORE_INDEX
from constellation_kit.data.sampler import ResumableSampler
from constellation_kit.data.splits import is_validation
from constellation_kit.data.tokenizer import END_OF_TEXT
from constellation_kit.errors import ConfigError
from constellation_kit.model import GroupedQueryAttention, TimmVisionEncoder, Transformer
from constellation_kit.train import MultimodalLanguageModel

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


def datamodule(**overrides) -> MultimodalDataModule:
    args = dict(
        source=None,
        tokenizer=ByteLevelBPE(300, special_tokens=[END_OF_TEXT, IMAGE_TOKEN, AUDIO_TOKEN]),
        image_backbone_kwargs=TINY_VIT, image_size=32, image_tokens=4, audio_tokens=3, audio_seconds=0.1,
        seq_len=32, global_batch_size=4, val_fraction=0.3, seed=3,
    )
    return MultimodalDataModule(**{**args, **overrides})


@pytest.fixture
def user_manifest(tmp_path: Path) -> Path:
    """Good pictures and clips, plus a corrupt JPEG, a truncated WAV and a missing path."""
    lines = []
    for i in range(16):
        Image.new("RGB", (20, 20), (i * 20, 0, 0)).save(tmp_path / f"img{i}.jpg")
        lines.append({"image": f"img{i}.jpg", "text": f"red level {i}"})
        soundfile.write(tmp_path / f"clip{i}.wav", np.full(800 + 100 * i, 0.1, dtype=np.float32), 16_000)
        lines.append({"audio": f"clip{i}.wav", "text": f"sound {i}"})
        lines.append({"text": f"just some text number {i} " * 4})
    jpeg = (tmp_path / "img0.jpg").read_bytes()
    (tmp_path / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (tmp_path / "truncated.wav").write_bytes((tmp_path / "clip0.wav").read_bytes()[:30])
    lines += [
        {"image": "broken.jpg", "text": "corrupt"},
        {"audio": "truncated.wav", "text": "truncated"},
        {"image": "gone.png", "text": "missing"},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def test_bad_files_are_skipped_counted_and_logged(user_manifest: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = datamodule(manifest=str(user_manifest))
    dm.setup("fit")
    assert dict(dm.skipped) == {"corrupt": 2, "missing": 1}
    assert "skipped 3 media files" in caplog.text and "gone.png" in caplog.text
    media = [i for split in (dm.train_dataset, dm.val_dataset) for i in split.bank.items]
    assert len(media) == 32 and not any(Path(i.path).name in {"broken.jpg", "truncated.wav", "gone.png"} for i in media)
    # The run goes on: every training batch loads.
    for batch in dm.train_dataloader():
        assert batch["tokens"].shape[1] == 32


def test_a_file_that_breaks_after_the_scan_becomes_an_untrained_blank(user_manifest: Path) -> None:
    dm = datamodule(manifest=str(user_manifest))
    dm.setup("fit")
    bank = dm.train_dataset.bank
    victim = next(i for i, item in enumerate(bank.items) if item.modality == "image")
    Path(bank.items[victim].path).unlink()
    row = next(r for r, spans in enumerate(dm.train_dataset.rows.spans) if any(s.item == victim for s in spans))
    example = dm.train_dataset[dm.train_dataset.num_text + row]
    assert bank.failures["missing"] == 2  # the one found at setup, and this one
    span = next(s for s in dm.train_dataset.rows.spans[row] if s.item == victim)
    caption = slice(span.start + span.num_placeholders - 1, span.start + span.num_placeholders + span.caption_len - 1)
    assert (example["targets"][caption] == IGNORE_INDEX).all()


def test_batches_carry_media_in_placeholder_order(user_manifest: Path) -> None:
    dm = datamodule(manifest=str(user_manifest))
    dm.setup("fit")
    ids = dm.placeholder_ids
    batches = list(dm._loader(dm.train_dataset, ResumableSampler(len(dm.train_dataset), shuffle=False), drop_last=False))
    assert sum(b["image"].shape[0] for b in batches) == len([i for i in dm.train_dataset.bank.items if i.modality == "image"])
    for batch in batches:
        assert batch["image"].shape[1:] == (3, 32, 32) and batch["audio"].shape[1:] == (1600,)
        assert batch["image_mask"].sum() == 4 * batch["image"].shape[0]
        assert batch["audio_mask"].sum() == 3 * batch["audio"].shape[0]
        assert (batch["image_mask"] == (batch["tokens"] == ids["image"])).all()
        # Placeholders are never targets; captions are, and name their item in order of appearance.
        assert not (batch["targets"] == ids["image"]).any() and not (batch["targets"] == ids["audio"]).any()
        captions = batch["image_caption"][batch["image_caption"] >= 0]
        assert captions.unique_consecutive().tolist() == list(range(batch["image"].shape[0]))


def test_augmentation_is_a_function_of_seed_epoch_and_item(user_manifest: Path) -> None:
    dm = datamodule(manifest=str(user_manifest), image_augmentation={"scale": [0.3, 1.0]})
    dm.setup("fit")
    bank = dm.train_dataset.bank
    index = next(i for i, item in enumerate(bank.items) if item.modality == "image")
    torch.manual_seed(0)
    first, _ = bank.load(index)
    torch.manual_seed(1)
    again, _ = bank.load(index)
    torch.testing.assert_close(first, again)
    bank.epoch_source = type("Sampler", (), {"epoch": 1})()
    assert not torch.equal(bank.load(index)[0], first)


def test_grounding_questions_hold_the_true_caption_among_distinct_candidates(user_manifest: Path) -> None:
    dm = datamodule(manifest=str(user_manifest), caption_choices=2)
    dm.setup("fit")
    for modality in ("image", "audio"):
        dataset = dm.grounding[modality]
        for choice in dataset.choices:
            item = dataset.bank.items[choice.item]
            texts = [dm.tokenizer.decode(c) for c in choice.candidates]
            assert texts[choice.answer] == item.text and len(set(texts)) == 2
        batch = next(iter(dm.grounding_dataloader(modality)))
        n = len(batch["answer"])
        assert batch["tokens"].shape[0] == 2 * n and batch[modality].shape[0] == n
        assert batch[f"{modality}_mask"].sum() == 2 * n * dm.num_placeholders[modality]


def test_builtin_data_is_written_to_files_and_read_back(tmp_path: Path) -> None:
    dm = datamodule(builtin_images=30, builtin_audio=30, cache_dir=str(tmp_path), audio_seconds=0.5)
    dm.setup("fit")
    items = dm.items
    assert sum(i.modality == "image" for i in items) == 30 and all(Path(i.path).is_file() for i in items)
    assert items[0].text.startswith("a ") and not dm.skipped
    audio = next(i for i in items if i.modality == "audio")
    assert soundfile.info(audio.path).samplerate == 16_000


def test_builtin_media_are_not_scanned_but_a_users_manifest_is(tmp_path: Path, user_manifest: Path) -> None:
    # The kit wrote the built-in files (into a folder renamed into place when complete): decoding them
    # all again only cost the first run time. A user's files are scanned as before.
    def no_scan(items):
        raise AssertionError("scanned")

    builtin = datamodule(builtin_images=12, builtin_audio=12, cache_dir=str(tmp_path / "cache"))
    builtin._scan = no_scan
    builtin.prepare_data()
    builtin.setup("fit")
    assert len(builtin.train_dataset.bank.items) + len(builtin.val_dataset.bank.items) == 24
    user = datamodule(manifest=str(user_manifest), cache_dir=str(tmp_path / "cache"))
    user._scan = no_scan
    with pytest.raises(AssertionError, match="scanned"):
        user.prepare_data()


class RecordingLogger:
    """Stands in for the MLflow logger: keeps what ``log_metrics`` was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((metrics, step))


def test_skip_counts_reach_the_trainers_loggers(tmp_path: Path) -> None:
    lines = []
    for i in range(6):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(tmp_path / f"img{i}.jpg")
        lines.append({"image": f"img{i}.jpg", "text": f"red level {i}"})
        lines.append({"text": f"just some text number {i} " * 4})
    jpeg = (tmp_path / "img0.jpg").read_bytes()
    (tmp_path / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    lines.append({"image": "broken.jpg", "text": "corrupt"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    dm = datamodule(manifest=str(manifest))
    logger = RecordingLogger()
    dm.trainer = type("Trainer", (), {"loggers": [logger]})()
    dm.setup("fit")
    assert logger.calls == [({"data/skipped_items": 1.0, "data/skipped_corrupt": 1.0, "data/non_utf8_documents": 0.0}, 0)]
    dm.setup("validate")  # already set up: not counted or logged twice
    assert len(logger.calls) == 1



def test_a_missing_manifest_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "corpus" / "manifest.jsonl"
    datamodule = MultimodalDataModule(source=None, manifest=str(missing), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"manifest .*corpus/manifest.jsonl' does not exist.*data.init_args.manifest"):
        datamodule.vocab_size  # what the CLI asks first: the tokenizer's cache is keyed on the manifest


def test_without_the_scan_bad_files_become_blanks_when_loaded(user_manifest: Path) -> None:
    dm = datamodule(manifest=str(user_manifest), scan_media=False)
    dm.setup("fit")
    assert sum(dm.skipped.values()) == 0  # nothing decoded at setup
    for split in (dm.train_dataset, dm.val_dataset):
        for index in range(len(split)):
            split[index]  # every example loads; the three bad files come back as blanks
    assert dict(dm.skipped) == {"corrupt": 2, "missing": 1}


def batches(dm: MultimodalDataModule, epochs: int) -> list[dict]:
    """Every training batch of ``epochs`` epochs, the sampler's epoch set first as Lightning does."""
    loader = dm.train_dataloader()
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out += list(loader)
    return out


def test_loader_workers_give_the_same_batches_in_the_same_order(user_manifest: Path) -> None:
    # Augmentation on: each item's crop is seeded from (seed, epoch, item), so it must not depend on
    # which process loads it; and the second epoch must see the epoch that was set after the workers started.
    common = dict(manifest=str(user_manifest), image_augmentation={"scale": [0.3, 1.0]})
    single = datamodule(**common)
    single.setup("fit")
    workers = datamodule(**common, num_workers=2)
    workers.setup("fit")
    expected, got = batches(single, 2), batches(workers, 2)
    assert len(got) == len(expected) > 2
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_blanks_made_in_loader_workers_are_counted_in_the_batches(user_manifest: Path) -> None:
    dm = datamodule(manifest=str(user_manifest), scan_media=False, num_workers=2, global_batch_size=1)
    dm.setup("fit")
    counts = sum(batch["media_skipped"] for batch in dm.train_dataloader())
    bad = {"broken.jpg": "corrupt", "truncated.wav": "corrupt", "gone.png": "missing"}
    expected = Counter(bad[Path(i.path).name] for i in dm.train_dataset.bank.items if Path(i.path).name in bad)
    assert expected  # at least one bad file is in the training split
    assert dict(zip(SKIP_REASONS, counts.tolist())) == {r: expected.get(r, 0) for r in SKIP_REASONS}
    assert not dm.skipped  # this process loaded nothing: the counts came back in the batches


class HistoryLogger(Logger):
    """A Lightning logger that keeps every metric's history, as MLflow would: ``history[name] = [(step, value)]``."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[tuple[int, float]]] = {}

    name, version = "history", 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.history.setdefault(key, []).append((step, value))


def test_load_time_skips_from_workers_reach_the_loggers_as_a_running_total(tmp_path: Path) -> None:
    # xl.yaml's setting: no scan, loader workers. Each bad file in the training split is loaded once in
    # the epoch, in a worker; its count must come back with the batch and be logged from the main process.
    # (A recording logger stands in for MLflow: the kit's MLflow logger takes whatever reaches trainer.loggers,
    # and creating an MLflow SQLite store costs more than this whole test.)
    # Pictures only, a few rows: a handful of steps. Two bad files named so that both land in the training split.
    lines = []
    for i in range(8):
        Image.new("RGB", (20, 20), (i * 30, 0, 0)).save(tmp_path / f"img{i}.jpg")
        lines.append({"image": f"img{i}.jpg", "text": f"red level {i}"})
    bad_names = [n for n in (f"bad{i}.jpg" for i in range(50)) if not is_validation(n, 3, 0.3)][:2]
    (tmp_path / bad_names[0]).write_bytes(b"not a picture")  # corrupt; bad_names[1] is never written: missing
    lines += [{"image": name, "text": "bad"} for name in bad_names]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    dm = datamodule(manifest=str(manifest), scan_media=False, num_workers=2, global_batch_size=1)
    model = MultimodalLanguageModel(
        network=partial(Transformer, d_model=32, n_layers=1, attention=partial(GroupedQueryAttention, n_heads=2)),
        vocab_size=dm.vocab_size,
        vision_encoder=partial(TimmVisionEncoder, num_tokens=4, backbone_kwargs=TINY_VIT),
    )
    logger = HistoryLogger()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_val_batches=0, log_every_n_steps=1, logger=logger,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert sorted(Path(i.path).name for i in dm.train_dataset.bank.items if i.text == "bad") == sorted(bad_names)
    expected = {"corrupt": 1, "missing": 1}
    assert not dm.skipped  # bad files were trained on as blanks, all counted in workers
    totals = [value for _, value in logger.history["data/skipped_items"]]
    assert len(totals) == trainer.global_step + 1  # step 0 from setup, then every step
    assert totals[0] == 0.0 and totals == sorted(totals) and totals[-1] == sum(expected.values())  # a running total
    for reason in SKIP_REASONS:
        assert logger.history[f"data/skipped_{reason}"][-1][1] == expected.get(reason, 0)


def test_every_rank_trains_on_rank_zeros_scan(user_manifest: Path) -> None:
    # Rank 0's node read one more file as corrupt than this rank's did (a flaky mount, a node-local cache):
    # this rank must take rank 0's answer, or the ranks' datasets, lengths and batches would differ.
    local = datamodule(manifest=str(user_manifest)).scan_result()
    rank0 = {**local, "usable": local["usable"][1:], "skipped": {**local["skipped"], "corrupt": local["skipped"]["corrupt"] + 1}}
    broadcasts = []

    class Strategy:
        @staticmethod
        def broadcast(obj, src=0):
            broadcasts.append((obj, src))
            return rank0

    dm = datamodule(manifest=str(user_manifest))
    dm.trainer = SimpleNamespace(loggers=[], world_size=2, strategy=Strategy())
    dm.setup("fit")
    assert broadcasts == [(local, 0)]
    media = [i for i in dm.items if i.modality != "text"]
    held = {i.path for split in (dm.train_dataset, dm.val_dataset) for i in split.bank.items}
    assert media[local["usable"][0]].path not in held and len(held) == len(rank0["usable"])
    assert dm.scan_skipped == Counter(rank0["skipped"]) == dm.skipped


def test_the_cached_scan_is_redone_when_a_file_changes(user_manifest: Path) -> None:
    first = datamodule(manifest=str(user_manifest)).scan_result()
    again = datamodule(manifest=str(user_manifest))
    again._scan = None  # a second scan of unchanged files must come from the cache
    assert again.scan_result() == first
    (user_manifest.parent / "img3.jpg").write_bytes(b"no longer a picture")
    changed = datamodule(manifest=str(user_manifest)).scan_result()
    assert changed["skipped"]["corrupt"] == first["skipped"]["corrupt"] + 1


def test_validation_and_grounding_loaders_leave_the_global_torch_rng_alone(user_manifest: Path) -> None:
    # A validation between two training steps must not change the dropout masks after it: a run resumed
    # from a checkpoint taken before that validation skips it, and must still follow the straight run.
    dm = datamodule(manifest=str(user_manifest))
    dm.setup("fit")
    state = torch.get_rng_state()
    list(dm.val_dataloader())
    for modality in ("image", "audio"):
        loader = dm.grounding_dataloader(modality, items_per_batch=2)
        if loader is not None:
            list(loader)
    assert torch.equal(torch.get_rng_state(), state)
