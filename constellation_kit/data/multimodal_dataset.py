"""Datasets that mix packed text rows with packed media rows, and the collate that batches them
(the grounding check's dataset: :mod:`~constellation_kit.data.grounding`).

A batch is a dict:

- ``tokens``, ``targets``, ``document_ids``: (B, T) int64, as for text (targets -100 where ignored);
- ``image_mask``, ``audio_mask``: (B, T) bool, the placeholder positions of each modality;
- ``image``: (M_img, 3, H, W) float, ``audio``: (M_aud, samples) float, stacked in the row-major
  order of their placeholders, so item m's tokens fill the m-th run of placeholders;
- ``image_caption``, ``audio_caption``: (B, T) int64, for each caption token the index of its item
  in ``image``/``audio`` (-1 elsewhere), for losses that pair a media item with its text;
- ``media_skipped``: (len(SKIP_REASONS),) int64, the items of this batch that failed to load and
  stand as blanks, by reason. The batch is the one thing a loader worker sends back, so this is
  how failures found in workers (whose counters are copies) reach the trainer and its loggers.
"""

import contextlib
import hashlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from constellation_kit.data.manifest import ManifestItem
from constellation_kit.data.media import SKIP_REASONS, MediaError
from constellation_kit.data.media_rows import MediaRows
from constellation_kit.data.packing import IGNORE_INDEX, PackedDataset

log = logging.getLogger(__name__)

MediaLoader = Callable[[ManifestItem], torch.Tensor]
"""Decodes and transforms one item into the tensor its encoder takes (raises MediaError)."""


@contextlib.contextmanager
def seeded(*key: int) -> Iterator[None]:
    """Run the block with Python's and torch's CPU generators seeded from ``key``, then restore both.

    timm's random crops draw from those global generators; seeding them per item makes an
    augmentation a function of (seed, epoch, item) alone, so a resumed run, or one with more
    loader workers, sees exactly the crops an uninterrupted run would have seen.
    """
    seed = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        # The CPU generator alone, which is all fork_rng(devices=[]) restores: torch.manual_seed would
        # also reseed every accelerator's generator (left changed on the way out) and, on a CUDA
        # build, queue a lazy seed call with its captured stack each time (half a batch's load time).
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


@dataclass
class MediaBank:
    """One split's media items and how to load each modality (decode + transform).

    ``augment_seed`` is set for a training split: each load is then seeded from
    ``(augment_seed, epoch, item)`` (see :func:`seeded`), the epoch read from ``epoch_source``
    (the training sampler, whose epoch Lightning sets).
    """

    items: list[ManifestItem]
    loaders: dict[str, MediaLoader]
    blanks: dict[str, torch.Tensor]  # what stands in for an item that fails at load time
    failures: Counter
    augment_seed: int | None = None
    epoch_source: object | None = None

    @property
    def epoch(self) -> int:
        return getattr(self.epoch_source, "epoch", 0)

    def load(self, index: int) -> tuple[torch.Tensor, str | None]:
        """The item's tensor and ``None``, or, when it fails (a file changed since the scan, or never
        scanned), a blank and the failure's reason."""
        item = self.items[index]
        try:
            if self.augment_seed is None:
                return self.loaders[item.modality](item), None
            with seeded(self.augment_seed, self.epoch, index):
                return self.loaders[item.modality](item), None
        except MediaError as error:
            self.failures[error.reason] += 1
            log.warning("skipping %s at load time: %s", item.modality, error)
            return self.blanks[item.modality], error.reason


def no_skips() -> torch.Tensor:
    """A zero count per skip reason, (len(SKIP_REASONS),) int64."""
    return torch.zeros(len(SKIP_REASONS), dtype=torch.int64)


def media_row(rows: MediaRows, bank: MediaBank, r: int, placeholder_ids: dict[str, int]) -> dict:
    """Row ``r`` of ``rows`` as an example dict, its media decoded (see the module docstring)."""
    window = torch.from_numpy(rows.tokens[r])
    documents = torch.from_numpy(rows.document_ids[r])
    predictable = torch.from_numpy(rows.predictable[r])
    targets = window[1:].clone()
    targets[(documents[1:] != documents[:-1]) | ~predictable[1:]] = IGNORE_INDEX
    tokens = window[:-1]
    example = {"tokens": tokens, "targets": targets, "document_ids": documents[:-1]}
    media: dict[str, list[torch.Tensor]] = {m: [] for m in placeholder_ids}
    captions = {m: torch.full_like(tokens, -1) for m in placeholder_ids}
    skipped = no_skips()
    for span in rows.spans[r]:
        modality = bank.items[span.item].modality
        tensor, failure = bank.load(span.item)
        caption = slice(span.start + span.num_placeholders, span.start + span.num_placeholders + span.caption_len)
        if failure is not None:
            skipped[SKIP_REASONS.index(failure)] += 1
            # Keep the placeholders (the shapes must match) but learn nothing from a blank.
            targets[max(caption.start - 1, 0) : caption.stop - 1] = IGNORE_INDEX
        captions[modality][caption.start : min(caption.stop, len(tokens))] = len(media[modality])
        media[modality].append(tensor)
    for modality, token_id in placeholder_ids.items():
        example[f"{modality}_mask"] = tokens == token_id
        example[f"{modality}_caption"] = captions[modality]
        example[modality] = media[modality]
    example["media_skipped"] = skipped
    return example


def text_row(dataset: PackedDataset, index: int, modalities: tuple[str, ...]) -> dict:
    """A packed text window with empty media fields."""
    return with_empty_media(dataset[index], modalities)


def with_empty_media(example: dict, modalities: tuple[str, ...]) -> dict:
    """A text example given the media fields of a row without media."""
    for modality in modalities:
        example[f"{modality}_mask"] = torch.zeros_like(example["tokens"], dtype=torch.bool)
        example[f"{modality}_caption"] = torch.full_like(example["tokens"], -1)
        example[modality] = []
    example["media_skipped"] = no_skips()
    return example


class MixedDataset(Dataset):
    """Text windows (indices ``0..len(text)-1``) then media rows; the sampler shuffles them together."""

    def __init__(self, text: PackedDataset | None, rows: MediaRows, bank: MediaBank, placeholder_ids: dict[str, int]) -> None:
        self.text, self.rows, self.bank, self.placeholder_ids = text, rows, bank, placeholder_ids
        self.num_text = len(text) if text is not None else 0

    def __len__(self) -> int:
        return self.num_text + len(self.rows)

    def __getitem__(self, index: int) -> dict:
        if index < self.num_text:
            return text_row(self.text, index, tuple(self.placeholder_ids))
        return media_row(self.rows, self.bank, index - self.num_text, self.placeholder_ids)


def collate_mixed(examples: list[dict], modalities: tuple[str, ...], blanks: dict[str, torch.Tensor]) -> dict:
    """Stack a list of :class:`MixedDataset` examples into one batch (module docstring)."""
    sums = ("media_skipped",)  # counts per batch, not per row
    batch = {key: torch.stack([e[key] for e in examples]) for key in examples[0] if key not in (*modalities, *sums)}
    batch["media_skipped"] = torch.stack([e["media_skipped"] for e in examples]).sum(dim=0)
    for modality in modalities:
        items = [t for e in examples for t in e[modality]]
        batch[modality] = torch.stack(items) if items else blanks[modality].new_zeros((0, *blanks[modality].shape))
        # Per-row item indices -> batch-wide indices: offset each row by the items before it.
        offset = 0
        captions = batch[f"{modality}_caption"]
        for row, example in enumerate(examples):
            captions[row][captions[row] >= 0] += offset
            offset += len(example[modality])
    return batch


# The grounding check's dataset and collate live in their own module; these names stay importable here.
from constellation_kit.data.grounding import Choice, GroundingDataset, collate_grounding  # noqa: E402, F401
