"""The loader side of streaming: each worker reads its documents, packs rows and yields whole batches.

One *slot* per loader worker per rank. A slot draws documents from the mixture
(:class:`~constellation_kit.data.mixture.Mixture`), reads each from its source's shards in its own
order (:class:`~constellation_kit.data.document_order.DocumentOrder`), packs text into windows and
media items into rows (:mod:`~constellation_kit.data.stream_packing`), decodes and augments the
media of a row (:mod:`~constellation_kit.data.media`) and yields a collated micro-batch (the dict
:mod:`~constellation_kit.data.multimodal_dataset` describes) with one more entry,
``stream_state``: where that slot stands *after* the batch. The DataModule keeps the latest state
of every slot from the batches training consumed; restarting each slot from its state gives the
batches an uninterrupted run would have seen next.

PyTorch hands out an iterable dataset's batches from workers 0, 1, ..., W-1, 0, ... in turn, and a
new iterator starts again at worker 0. A resumed loader therefore *rotates*: its worker ``i`` plays
slot ``(i + consumed) mod W``, so the slot whose turn was next comes first.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from constellation_kit.data.document_order import DocumentOrder, Position
from constellation_kit.data.media import (
    DEFAULT_MAX_MEDIA_BYTES,
    MediaError,
    decode_audio,
    decode_image,
    fit_length,
    image_transform,
)
from constellation_kit.data.mixture import Mixture
from constellation_kit.data.multimodal_dataset import collate_mixed, media_row, seeded, with_empty_media
from constellation_kit.data.packing import window_example
from constellation_kit.data.shards import ShardItem, ShardReader
from constellation_kit.data.stream_packing import MediaPacker, PendingMedia, Ref, TextPacker
from constellation_kit.errors import ConfigError

log = logging.getLogger(__name__)

MODALITIES = ("image", "audio")


@dataclass
class MediaSettings:
    """How media bytes become encoder inputs: images (3, image_size, image_size), audio (audio_samples,)."""

    image_backbone: str = "vit_tiny_patch16_224"
    image_backbone_kwargs: dict[str, Any] | None = None
    image_size: int = 224
    image_augmentation: dict[str, Any] | None = None
    audio_samples: int = 160_000
    max_media_bytes: int | None = DEFAULT_MAX_MEDIA_BYTES

    def blanks(self) -> dict[str, torch.Tensor]:
        return {"image": torch.zeros(3, self.image_size, self.image_size), "audio": torch.zeros(self.audio_samples)}


@dataclass
class StreamSpec:
    """Everything a slot needs, picklable into loader workers.

    ``chunks[i]`` are source ``i``'s chunks of the split being read (``{chunk: (first, end)}``).
    """

    names: list[str]
    weights: list[float]
    readers: list[ShardReader]
    chunks: list[dict[int, tuple[int, int]]]
    seq_len: int
    batch_size: int
    eos_id: int
    placeholder_ids: dict[str, int]
    num_placeholders: dict[str, int]
    seed: int
    media: MediaSettings = field(default_factory=MediaSettings)


class ShardMediaBank:
    """The media items of one row, decoded on demand (the interface :func:`media_row` reads).

    Training augmentations are seeded from ``(seed, source, item, draw)``: a function of the item
    and of when the stream met it, so a resumed slot makes the crops the uninterrupted one made.
    """

    def __init__(self, items: list[PendingMedia], media: MediaSettings, transforms: dict, training: bool, seed: int) -> None:
        self.items, self.media, self.transforms, self.training, self.seed = items, media, transforms, training, seed

    def _decode(self, entry: PendingMedia) -> torch.Tensor:
        source, index, _, _ = entry.ref
        label = f"source {source} item {index}"
        if entry.modality == "image":
            return self.transforms["image"](decode_image(entry.item.image, self.media.max_media_bytes, label))
        waveform = decode_audio(entry.item.audio, max_bytes=self.media.max_media_bytes, label=label)
        spare = max(0, waveform.shape[0] - self.media.audio_samples)
        offset = int(torch.randint(0, spare + 1, ()).item()) if self.training and spare else 0
        return fit_length(waveform, self.media.audio_samples, offset)

    def load(self, index: int) -> tuple[torch.Tensor, str | None]:
        entry = self.items[index]
        try:
            if not self.training:
                return self._decode(entry), None
            with seeded(self.seed, *entry.ref[:2], entry.ref[3]):
                return self._decode(entry), None
        except MediaError as error:
            log.warning("skipping %s: %s", entry.modality, error)
            return self.media.blanks()[entry.modality], error.reason


class SlotStream:
    """One slot's endless (training) or single-pass (validation) stream of rows.

    Args:
        spec: the sources and settings.
        slot, num_slots: this slot and the grid size.
        training: shuffle, endless, augment; else storage order, one pass, no augmentation.
        state: where to start (a ``stream_state``); ``None`` starts at the beginning.
    """

    def __init__(self, spec: StreamSpec, slot: int, num_slots: int, training: bool, state: dict | None = None) -> None:
        self.spec, self.slot, self.training = spec, slot, training
        self.orders = [
            DocumentOrder(name, chunks, slot, num_slots, spec.seed, shuffle=training)
            for name, chunks in zip(spec.names, spec.chunks)
        ]
        self.mixture = Mixture(spec.weights, spec.seed, slot)
        self.text = TextPacker(spec.seq_len, spec.eos_id)
        self.media = MediaPacker(spec.seq_len, spec.eos_id, spec.placeholder_ids, spec.num_placeholders)
        state = state or {}
        saved = state.get("positions", {})
        self.positions = [Position(*saved.get(name, (0, 0))) for name in spec.names]
        self.draws = state.get("draws", 0)
        self.batches = state.get("batches", 0)
        if state:
            self.text.restore(state["text"], self.read)
            self.media.restore(state["media"], self.read)
        self.exhausted = [False] * len(spec.names)
        self._iters = [order.read_from(pos, endless=training) for order, pos in zip(self.orders, self.positions)]
        self._transforms: dict | None = None

    def read(self, ref: Ref) -> ShardItem:
        source, index, chunk, _ = ref
        return self.spec.readers[source].read(index, chunk)

    def state(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "draws": self.draws,
            "batches": self.batches,
            "positions": {name: [p.epoch, p.offset] for name, p in zip(self.spec.names, self.positions)},
            "text": self.text.state(),
            "media": self.media.state(),
        }

    def _next_source(self) -> int | None:
        """The source of the next document: the mixture's draw (training), or the first source
        with documents left (validation: every held-out document once, source by source)."""
        if self.training:
            source = self.mixture.source(self.draws)
            self.draws += 1
            return source
        for source, done in enumerate(self.exhausted):
            if not done:
                return source
        return None

    def rows(self) -> Iterator[tuple]:
        """Rows as ``("text", tokens, document_ids)`` or ``("media", items, MediaRows)``, one at a time."""
        while True:
            window = self.text.pop()
            if window is not None:
                yield ("text", *window)
                continue
            source = self._next_source()
            if source is None:
                if (row := self.media.flush()) is not None:
                    yield ("media", *row)
                return
            try:
                index, chunk, upcoming, last = next(self._iters[source])
            except StopIteration:
                if self.training:
                    raise ConfigError(
                        f"source {self.spec.names[source]!r} has no training documents for loader slot {self.slot}: "
                        "it has fewer items than ranks x loader workers; add data or lower num_workers"
                    ) from None
                self.exhausted[source] = True
                continue
            ref = (source, index, chunk, self.draws)
            item = self.spec.readers[source].read(index, chunk, upcoming, last and not self.training)
            if item.modality == "text":
                self.text.add(ref, item.tokens)
            else:
                if item.modality not in self.spec.placeholder_ids:
                    raise ConfigError(
                        f"source {self.spec.names[source]!r} holds {item.modality} items but the tokenizer has no "
                        f"placeholder token for them: curate with a tokenizer whose special tokens include it"
                    )
                if (row := self.media.add(ref, item)) is not None:
                    yield ("media", *row)

    def example(self, row: tuple) -> dict:
        """A row as a training example with its media decoded (in the worker)."""
        if row[0] == "text":
            return with_empty_media(window_example(row[1], row[2]), MODALITIES)
        if self._transforms is None:
            m = self.spec.media
            self._transforms = {
                "image": image_transform(m.image_backbone, m.image_size, self.training, m.image_augmentation,
                                         m.image_backbone_kwargs)
            }
        _, items, rows = row
        bank = ShardMediaBank(items, self.spec.media, self._transforms, self.training, self.spec.seed)
        ids = {m: self.spec.placeholder_ids.get(m, -1) for m in MODALITIES}
        return media_row(rows, bank, 0, ids)

    def collate(self, rows: list[tuple]) -> dict:
        batch = collate_mixed([self.example(r) for r in rows], MODALITIES, self.spec.media.blanks())
        return batch

    def batches_of_rows(self) -> Iterator[list[tuple]]:
        """Rows grouped into micro-batches; training drops nothing (the stream is endless), validation
        yields a last, shorter batch."""
        rows: list[tuple] = []
        for row in self.rows():
            rows.append(row)
            if len(rows) == self.spec.batch_size:
                self.batches += 1
                yield rows
                rows = []
        if rows and not self.training:
            yield rows


class TrainStream(IterableDataset):
    """The training batches of one rank: worker ``i`` runs slot ``rank * W + (i + rotation) % W``.

    Args:
        spec: sources and settings.
        rank, world_size: this process's place.
        workers: loader workers per rank (0 counts as one slot, the main process).
        states: ``{slot: stream_state}`` to resume from.
        rotation: batches this rank consumed before, modulo the workers (see the module docstring).
    """

    def __init__(self, spec: StreamSpec, rank: int, world_size: int, workers: int,
                 states: dict[int, dict] | None = None, rotation: int = 0) -> None:
        self.spec, self.rank, self.world_size = spec, rank, world_size
        self.slots_per_rank = max(1, workers)
        self.states, self.rotation = states or {}, rotation

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        slot = self.rank * self.slots_per_rank + (worker + self.rotation) % self.slots_per_rank
        stream = SlotStream(self.spec, slot, self.world_size * self.slots_per_rank, True, self.states.get(slot))
        for rows in stream.batches_of_rows():
            batch = stream.collate(rows)
            batch["stream_state"] = stream.state()
            yield batch


class ValidationStream(IterableDataset):
    """Every held-out document once, in storage order, the same on every call.

    Every rank reads the whole (small) validation split and keeps batches ``rank, rank + world, ...``
    of each complete round, so all ranks run the same number of validation steps (sharded models
    need every rank in every forward); media are decoded only for the batches a rank keeps.
    """

    def __init__(self, spec: StreamSpec, rank: int, world_size: int) -> None:
        self.spec, self.rank, self.world_size = spec, rank, world_size

    def __iter__(self) -> Iterator[dict]:
        stream = SlotStream(self.spec, 0, 1, training=False)
        round_: list[list[tuple]] = []
        for rows in stream.batches_of_rows():
            round_.append(rows)
            if len(round_) == self.world_size:
                yield stream.collate(round_[self.rank])
                round_ = []


def drop_stream_state(batch: Any) -> dict | None:
    """Remove and return a batch's ``stream_state`` (the model never sees it)."""
    if isinstance(batch, dict):
        return batch.pop("stream_state", None)
    return None


