"""The multimodal DataModule: text, image-text and audio-text examples mixed in one run."""

import hashlib
import logging
import random
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from constellation_kit.data import generated_media
from constellation_kit.data.manifest import ManifestItem, read_manifest
from constellation_kit.data.media import (
    DEFAULT_MAX_MEDIA_BYTES,
    clip_samples,
    decode_audio,
    decode_image,
    fit_length,
    image_transform,
)
from constellation_kit.data.media_rows import MediaRows, item_tokens, pack_media_items
from constellation_kit.data.media_scan import SCAN_VERSION, cached_scan, scan_media  # noqa: F401 (SCAN_VERSION re-exported)
from constellation_kit.data.multimodal_dataset import (
    Choice,
    GroundingDataset,
    MediaBank,
    MixedDataset,
    collate_grounding,
    collate_mixed,
)
from constellation_kit.data.packing import PackedDataset, pack_documents
from constellation_kit.data.sampler import ResumableSampler
from constellation_kit.data.seeded_loader import own_generator
from constellation_kit.data.sources import DocumentSource, PythonStdlibSource
from constellation_kit.data.text_datamodule import TextDataModule
from constellation_kit.data.tokenizer import AUDIO_TOKEN, END_OF_TEXT, IMAGE_TOKEN, ByteLevelBPE
from constellation_kit.errors import ConfigError
from constellation_kit.lazy_default import lazy_default

log = logging.getLogger(__name__)

PLACEHOLDERS = {"image": IMAGE_TOKEN, "audio": AUDIO_TOKEN}


class MultimodalDataModule(TextDataModule):
    """Packed text windows and packed media rows (image-text, audio-text) in one shuffled stream.

    Text comes from ``source`` and the manifest's ``{"text"}`` lines, packed exactly as in
    :class:`TextDataModule`. Each ``{"image"}``/``{"audio"}`` line becomes ``image_tokens`` (or
    ``audio_tokens``) placeholder tokens followed by its caption; items are packed whole into rows
    (:mod:`~constellation_kit.data.media_rows`). Batches are described in
    :mod:`~constellation_kit.data.multimodal_dataset`. Without a ``manifest`` the built-in
    generated pictures and sounds are written to the cache and read back like a user's files.

    Every media file is decoded once, by one process, in :meth:`prepare_data` (the result is
    cached, and broadcast from rank 0 in :meth:`setup` so every rank trains on the same items); a
    bad one (:data:`~constellation_kit.data.media.SKIP_REASONS`: missing, unreadable, corrupt,
    too large, a decompression bomb, non-finite audio) is skipped, counted by reason in
    :attr:`skipped`, logged, and sent to the trainer's loggers as ``data/skipped_items`` and
    ``data/skipped_<reason>``; the run goes on. A file that breaks after that scan (or is never
    scanned: ``scan_media: false``) is replaced by a blank whose caption is not trained on; each
    batch carries the count of its blanks (``media_skipped``), which
    :class:`~constellation_kit.train.MultimodalLanguageModel` adds to those metrics, summed over
    loader workers and ranks, as the run goes.

    Validation also holds multiple-choice grounding questions (:meth:`grounding_dataloader`): for
    each held-out media item (up to ``grounding_items`` per modality), its caption and
    ``caption_choices - 1`` other held-out captions; chance is ``1 / caption_choices``.

    Arguments not listed below are as in :class:`TextDataModule`.

    Args:
        source: text documents (``None``: only the manifest's text lines).
        manifest: a JSONL manifest of the user's examples (paths relative to it); ``None`` uses the
            built-in generated data.
        builtin_images: generated pictures when ``manifest`` is ``None``.
        builtin_audio: generated sound clips when ``manifest`` is ``None``.
        tokenizer: must list ``<|image|>`` and ``<|audio|>`` among its ``special_tokens``.
        image_backbone: the timm model whose data config (mean, std, interpolation) the image
            transform follows: the vision encoder's backbone.
        image_backbone_kwargs: the same ``backbone_kwargs`` the vision encoder gets, if any.
        image_size: side of the square images fed to the encoder.
        image_augmentation: ``timm.data.create_transform`` arguments for training (``hflip``,
            ``scale``, ``color_jitter``, ...); evaluation is always deterministic.
        image_tokens: placeholders per image: the vision encoder's ``num_tokens``.
        audio_tokens: placeholders per clip: the audio encoder's ``num_tokens``.
        audio_seconds: clips are cropped (training: at a random offset) or zero-padded to this.
        caption_choices: candidates per grounding question.
        grounding_items: at most this many grounding questions per modality.
        scan_media: decode every media file once in :meth:`setup` and drop the bad ones before
            packing. ``False`` skips the scan (a corpus of millions of files, where every rank would
            spend hours decoding): a bad file is then found when it is loaded, becomes a blank whose
            caption is not trained on, and is counted the same way. The built-in media
            (``manifest: null``) are never scanned: the kit wrote them, and they appear complete.
        max_media_bytes: media files larger than this many bytes are skipped (``too_large``)
            without being read; ``None`` lifts the cap. The default, 64 MiB, is far above any
            image or clip a model of this kind trains on.
    """

    def __init__(
        self,
        source: DocumentSource | None = lazy_default(PythonStdlibSource),
        manifest: str | None = None,
        builtin_images: int = 2000,
        builtin_audio: int = 2000,
        tokenizer: ByteLevelBPE = lazy_default(ByteLevelBPE, special_tokens=[END_OF_TEXT, IMAGE_TOKEN, AUDIO_TOKEN]),
        image_backbone: str = "vit_tiny_patch16_224",
        image_backbone_kwargs: dict[str, Any] | None = None,
        image_size: int = 224,
        image_augmentation: dict[str, Any] | None = None,
        image_tokens: int = 16,
        audio_tokens: int = 16,
        audio_seconds: float = 10.0,
        caption_choices: int = 4,
        grounding_items: int = 200,
        scan_media: bool = True,
        max_media_bytes: int | None = DEFAULT_MAX_MEDIA_BYTES,
        seq_len: int = 256,
        global_batch_size: int = 32,
        val_fraction: float = 0.05,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            source=source, tokenizer=tokenizer, seq_len=seq_len, global_batch_size=global_batch_size,
            val_fraction=val_fraction, seed=seed, num_workers=num_workers, cache_dir=cache_dir,
        )
        if caption_choices < 2:
            raise ConfigError(f"caption_choices={caption_choices} must be at least 2 for a multiple-choice check")
        self.manifest = manifest
        self.builtin_images, self.builtin_audio = builtin_images, builtin_audio
        self.image_backbone, self.image_backbone_kwargs = image_backbone, image_backbone_kwargs
        self.image_size, self.image_augmentation = image_size, image_augmentation
        self.num_placeholders = {"image": image_tokens, "audio": audio_tokens}
        self.audio_samples = clip_samples(audio_seconds)
        self.caption_choices, self.grounding_items = caption_choices, grounding_items
        self.scan_media = scan_media
        if max_media_bytes is not None and max_media_bytes < 1:
            raise ConfigError(f"max_media_bytes={max_media_bytes} must be positive, or null for no cap")
        self.max_media_bytes = max_media_bytes
        self.skipped: Counter = Counter()
        """Media files skipped in this process, by reason: the scan's, then loads that failed here
        (in loader workers those land in the workers' copies; batches carry them instead)."""
        self.scan_skipped: Counter = Counter()
        """The scan's share of :attr:`skipped`: the same on every rank."""
        self._items: list[ManifestItem] | None = None
        self._placeholder_ids: dict[str, int] | None = None
        self.grounding: dict[str, GroundingDataset] = {}

    # -- the examples --------------------------------------------------------------------------

    def _manifest_path(self) -> Path:
        if self.manifest is not None:
            if not Path(self.manifest).is_file():
                raise ConfigError(
                    f"manifest {self.manifest!r} does not exist (relative paths start from {Path.cwd()}): point "
                    "data.init_args.manifest at your JSONL manifest (docs/multimodal.md), or set it to null for "
                    "the built-in generated data"
                )
            return Path(self.manifest)
        return generated_media.generate(self.cache_dir / "media", self.builtin_images, self.builtin_audio, self.seed)

    @property
    def items(self) -> list[ManifestItem]:
        """Every manifest line (text and media), media files not yet checked."""
        if self._items is None:
            self._items = read_manifest(self._manifest_path())
        return self._items

    def _is_val(self, item: ManifestItem) -> bool:
        return self.split_of(item.id) == "val"

    def _train_texts(self):
        texts = super()._train_texts() if self.source is not None else iter(())
        yield from texts
        yield from (item.text for item in self.items if not self._is_val(item))

    @property
    def source_fingerprint(self) -> str:
        if self._fingerprint is None:
            text = self.source.fingerprint() if self.source is not None else "none"
            manifest = hashlib.sha256(self._manifest_path().read_bytes()).hexdigest()[:16]
            self._fingerprint = hashlib.sha256(f"{text}|{manifest}".encode()).hexdigest()[:16]
        return self._fingerprint

    def data_fingerprint(self) -> dict[str, Any]:
        """As :meth:`TextDataModule.data_fingerprint`, with the text source and the manifest named apart."""
        fingerprint = super().data_fingerprint()
        fingerprint["source"] = self.source.fingerprint() if self.source is not None else "none"
        fingerprint["manifest"] = self.source_fingerprint  # text and manifest contents, hashed together
        return fingerprint

    @property
    def placeholder_ids(self) -> dict[str, int]:
        """Token id of each modality's placeholder."""
        if self._placeholder_ids is not None:
            return self._placeholder_ids
        ids = {m: self.tokenizer.token_to_id(token) for m, token in PLACEHOLDERS.items()}
        missing = [PLACEHOLDERS[m] for m, i in ids.items() if i is None]
        if missing:
            raise ConfigError(
                f"the tokenizer has no {missing} token(s): list {list(PLACEHOLDERS.values())} in "
                "data.init_args.tokenizer.init_args.special_tokens after <|endoftext|>"
            )
        self._placeholder_ids = ids
        return ids

    # -- decoding ------------------------------------------------------------------------------

    def _loaders(self, training: bool) -> dict[str, Any]:
        transform = image_transform(
            self.image_backbone, self.image_size, training, self.image_augmentation, self.image_backbone_kwargs
        )
        def load_image(item: ManifestItem) -> torch.Tensor:
            return transform(decode_image(item.path, self.max_media_bytes))  # (3, H, W)

        def load_audio(item: ManifestItem) -> torch.Tensor:
            waveform = decode_audio(item.path, max_bytes=self.max_media_bytes)
            spare = max(0, waveform.shape[0] - self.audio_samples)
            offset = random.randint(0, spare) if training and spare else 0  # a random crop of long clips (seeded per item)
            return fit_length(waveform, self.audio_samples, offset)  # (samples,)

        return {"image": load_image, "audio": load_audio}

    def _blanks(self) -> dict[str, torch.Tensor]:
        return {"image": torch.zeros(3, self.image_size, self.image_size), "audio": torch.zeros(self.audio_samples)}

    @property
    def _scans(self) -> bool:
        # The generator's files are written into a hidden folder renamed into place when complete:
        # decoding all 8000 again cost a second of the first run and found nothing. A file damaged
        # later still becomes a blank when loaded.
        return self.scan_media and self.manifest is not None

    def _scan(self, items: list[ManifestItem]) -> dict[str, Any]:
        """Decode every item once (:func:`~constellation_kit.data.media_scan.scan_media`)."""
        return scan_media(items, self.max_media_bytes)

    def scan_result(self) -> dict[str, Any]:
        """The media scan of the manifest, done once per cache by one process (:mod:`~constellation_kit.data.media_scan`)."""
        media = [item for item in self.items if item.modality != "text"]
        return cached_scan(media, self.cache_dir, self.max_media_bytes, self._scan)

    def _usable(self, items: list[ManifestItem]) -> list[ManifestItem]:
        """The items whose files decode, agreed by every rank; the rest are counted in :attr:`skipped` and logged.

        Rank 0's scan is broadcast: with a node-local cache each node scanned for itself, and a
        file that read differently on two nodes (a flaky mount) must not leave the ranks with
        different datasets, whose lengths and batches would no longer line up.
        """
        result = self.scan_result()
        trainer = getattr(self, "trainer", None)
        if trainer is not None and getattr(trainer, "world_size", 1) > 1:
            result = trainer.strategy.broadcast(result, src=0)
        self.scan_skipped = Counter(result["skipped"])
        self.skipped.update(self.scan_skipped)
        if result["first"]:
            counts = ", ".join(f"{reason}={n}" for reason, n in sorted(self.scan_skipped.items()))
            log.warning(
                "skipped %d media files (%s); first: %s",
                sum(self.scan_skipped.values()), counts, "; ".join(result["first"]),
            )
        return [items[i] for i in result["usable"]]

    def _skip_metrics(self) -> dict[str, float]:
        """The setup scan's skip counts for the run's loggers (MLflow), not only the console.

        ``data/skipped_items`` is the total (0 too, so a clean run says so) and
        ``data/skipped_<reason>`` each reason's share, logged at step 0; the LightningModule
        carries them on as running totals with what the batches report.
        """
        metrics = {"data/skipped_items": float(sum(self.scan_skipped.values()))}
        metrics.update({f"data/skipped_{reason}": float(n) for reason, n in sorted(self.scan_skipped.items())})
        return metrics

    # -- splits --------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Write the built-in media, train the tokenizer and scan the media, once, into the cache.

        Lightning calls this on local rank 0 of each node, the other ranks waiting at a barrier;
        the cache lock covers ranks that get here (or to the tokenizer) at once anyway.
        Tokenising the (small) caption and text lists happens in :meth:`setup`, on every rank.
        """
        self._manifest_path()
        self.tokenizer
        if self._scans:
            self.scan_result()

    def setup(self, stage: str) -> None:
        if self.train_dataset is not None or self.val_dataset is not None:
            return
        media = [item for item in self.items if item.modality != "text"]
        if self._scans:
            media = self._usable(media)
        placeholder_ids, eos = self.placeholder_ids, self.eos_id
        splits = {"train": [], "val": []}
        for item in media:
            splits[self.split_of(item.id)].append(item)
        texts = {"train": [], "val": []}
        if self.source is not None:
            for doc in self.source.documents():
                texts[self.split_of(doc.id)].append(doc.text)
        for item in self.items:
            if item.modality == "text":
                texts[self.split_of(item.id)].append(item.text)
        non_utf8 = len(self.source.non_utf8_ids) if self.source is not None else 0
        self._log_data_counts({**self._skip_metrics(), **self._non_utf8_metrics(non_utf8)})
        datasets = {}
        for split in ("train", "val"):
            training = split == "train"
            bank = MediaBank(
                splits[split], self._loaders(training), self._blanks(), self.skipped, self.seed if training else None
            )
            datasets[split] = MixedDataset(
                self._pack_text(texts[split]), self._pack_media(splits[split]), bank, placeholder_ids
            )
            if len(datasets[split]) == 0:
                raise ConfigError(f"the {split} split is empty: add data or change val_fraction={self.val_fraction}")
        self.train_dataset, self.val_dataset = datasets["train"], datasets["val"]
        val_bank = datasets["val"].bank
        for modality in ("image", "audio"):
            choices = self._choices(val_bank.items, modality)
            if choices:
                self.grounding[modality] = GroundingDataset(
                    choices, val_bank, placeholder_ids[modality], self.num_placeholders[modality], eos
                )
        # The digest names the exact items, in order: every rank of a run must print the same one.
        items = hashlib.sha256("\n".join(i.id for split in ("train", "val") for i in splits[split]).encode())
        log.info(
            "multimodal data: train %d text windows + %d media rows, val %d + %d; grounding questions %s; "
            "media items %s",
            datasets["train"].num_text, len(datasets["train"].rows), datasets["val"].num_text,
            len(datasets["val"].rows), {m: len(g) for m, g in self.grounding.items()}, items.hexdigest()[:12],
        )

    def _pack_text(self, texts: list[str]) -> PackedDataset | None:
        if not texts:
            return None
        encoded = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        try:
            return PackedDataset(pack_documents([np.asarray(e.ids) for e in encoded], self.seq_len, self.eos_id))
        except ValueError:
            return None  # less text than one window: the run is media only

    def _pack_media(self, items: list[ManifestItem]) -> MediaRows:
        order = list(range(len(items)))
        random.Random(self.seed).shuffle(order)  # mix the modalities within rows
        items[:] = [items[i] for i in order]
        # Each distinct caption encoded once, in one batch: the built-in data's 8000 items share 57
        # captions, and encoding them one call at a time took half a second of start-up.
        distinct = list(dict.fromkeys(item.text for item in items))
        encodings = self.tokenizer.encode_batch(distinct, add_special_tokens=False)
        captions = {text: encoding.ids for text, encoding in zip(distinct, encodings)}
        encoded = [
            item_tokens(self.placeholder_ids[item.modality], self.num_placeholders[item.modality], captions[item.text],
                        self.eos_id, self.seq_len + 1)
            for item in items
        ]
        counts = [self.num_placeholders[item.modality] for item in items]
        return pack_media_items(encoded, counts, self.seq_len, self.eos_id)

    def _choices(self, items: list[ManifestItem], modality: str) -> list[Choice]:
        """Grounding questions: each held-out item's caption among ``caption_choices - 1`` distinct others."""
        indices = [i for i, item in enumerate(items) if item.modality == modality][: self.grounding_items]
        captions = sorted({items[i].text for i in indices})
        if len(captions) < self.caption_choices:
            if indices:
                log.warning(
                    "no %s grounding check: %d distinct held-out captions, fewer than caption_choices=%d",
                    modality, len(captions), self.caption_choices,
                )
            return []
        rng = random.Random(self.seed + 1)
        choices = []
        for i in indices:
            distractors = rng.sample([c for c in captions if c != items[i].text], self.caption_choices - 1)
            answer = rng.randrange(self.caption_choices)
            candidates = distractors[:answer] + [items[i].text] + distractors[answer:]
            encoded = [self.tokenizer.encode(c, add_special_tokens=False).ids for c in candidates]
            choices.append(Choice(i, encoded, answer))
        return choices

    # -- loaders -------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        self.train_dataset.bank.epoch_source = self._train_sampler  # augmentation seeds follow its epoch
        return loader

    def val_dataloader(self) -> DataLoader:
        # Shuffled with a fixed seed so that limit_val_batches sees text and media rows alike.
        rank, world_size = self._rank_and_world()
        sampler = ResumableSampler(len(self.val_dataset), seed=self.seed, rank=rank, world_size=world_size)
        return self._loader(self.val_dataset, sampler, drop_last=False)

    def _collate_fn(self):
        return partial(collate_mixed, modalities=("image", "audio"), blanks=self._blanks())

    def grounding_dataloader(self, modality: str, items_per_batch: int = 16) -> DataLoader | None:
        """Batches of grounding questions for ``modality`` (``None`` when there are none)."""
        if modality not in self.grounding:
            return None
        return DataLoader(
            self.grounding[modality],
            batch_size=items_per_batch,
            collate_fn=partial(
                collate_grounding, pad_id=self.eos_id, placeholder_ids=self.placeholder_ids, blanks=self._blanks()
            ),
            generator=own_generator(self.seed),  # not the global stream: validation must not move training's RNG
        )
