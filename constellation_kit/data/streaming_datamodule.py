"""The streaming DataModule: curated shards (local or S3), mixed by weight, packed in loader workers, resumed exactly."""

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from constellation_kit.data.cache import default_cache_dir
from constellation_kit.data.datamodule import DataModule, check_data_fingerprint
from constellation_kit.data.media import DEFAULT_MAX_MEDIA_BYTES, clip_samples
from constellation_kit.data.seeded_loader import own_generator
from constellation_kit.data.shards import TOKENIZER, ShardReader, ShardSource, join, read_text
from constellation_kit.data.splits import split_chunks
from constellation_kit.data.streaming_dataset import (
    MediaSettings,
    StreamSpec,
    TrainStream,
    ValidationStream,
    drop_stream_state,
)
from constellation_kit.data.tokenizer import END_OF_TEXT, ByteLevelBPE
from constellation_kit.errors import ConfigError

log = logging.getLogger(__name__)

PLACEHOLDERS = {"image": "<|image|>", "audio": "<|audio|>"}


class StreamingDataModule(DataModule):
    """Batches streamed from tokenised shards: text windows and media rows, sources mixed by weight.

    Each batch is the dict :mod:`~constellation_kit.data.multimodal_dataset` describes (``tokens``,
    ``targets``, ``document_ids`` (B, T); ``image`` (M, 3, H, W) and ``audio`` (M, samples) with their
    masks and caption indices; ``media_skipped``). Text is packed exactly as
    :func:`~constellation_kit.data.packing.pack_documents` packs it, media items whole into rows;
    images are decoded, resized and augmented and audio decoded and cropped in the loader workers.
    Nothing is tokenised and no corpus is loaded at start-up: the shards are read chunk by chunk
    (:mod:`~constellation_kit.data.shards`), each loader worker of each rank reading its own chunks
    (:mod:`~constellation_kit.data.document_order`).

    The loader's position (every worker of every rank) is saved in checkpoints: a run resumed at the
    same number of ranks and workers sees exactly the batches the uninterrupted run would have.
    At another world size or worker count every source restarts at a fresh shuffle (the next epoch
    of each source): no document is lost, and documents already read in the interrupted epoch may
    be read once more. Changing weights between runs (same sources) keeps every source's position;
    the new shares apply from the next document drawn. Validation holds out whole chunks
    (:func:`~constellation_kit.data.splits.split_chunks`; the tail of a source's only chunk).

    A media file that does not decode is replaced by a blank whose caption is not trained on, and
    counted by reason in the batch's ``media_skipped`` (:data:`~constellation_kit.data.media.SKIP_REASONS`).

    ``image_backbone``, ``image_backbone_kwargs``, ``image_size``, ``image_augmentation``,
    ``image_tokens``, ``audio_tokens``, ``audio_seconds`` and ``max_media_bytes`` are as in
    :class:`~constellation_kit.data.MultimodalDataModule`.

    Args:
        sources: the curated directories and their weights, e.g. ``[{path: data/web, weight: 0.6},
            {path: s3://bucket/code, weight: 0.4}]``.
        tokenizer: the tokenizer the shards were made with; ``null`` uses the first source's
            ``tokenizer.json``. Its ``vocab_size``, when given, must match the file's (``plan``
            reads it). Every source must have been tokenised with the same tokenizer.
        storage_options: passed to boto3 for ``s3://`` sources (``endpoint_url`` for an
            S3-compatible store; credentials come from the usual AWS variables).
        seq_len: tokens per row.
        global_batch_size: sequences per optimizer step over accumulation and devices.
        val_fraction: share of each source's chunks held out for validation (at least one chunk).
        seed: shuffling, mixture draws and augmentation.
        num_workers: loader workers per rank; each reads and decodes its own share.
        cache_dir: where chunks downloaded from object storage are kept (``None``: the kit's cache).
    """

    def __init__(
        self,
        sources: list[ShardSource],
        tokenizer: ByteLevelBPE | None = None,
        storage_options: dict[str, Any] | None = None,
        image_backbone: str = "vit_tiny_patch16_224",
        image_backbone_kwargs: dict[str, Any] | None = None,
        image_size: int = 224,
        image_augmentation: dict[str, Any] | None = None,
        image_tokens: int = 16,
        audio_tokens: int = 16,
        audio_seconds: float = 10.0,
        max_media_bytes: int | None = DEFAULT_MAX_MEDIA_BYTES,
        seq_len: int = 256,
        global_batch_size: int = 32,
        val_fraction: float = 0.05,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(global_batch_size, val_fraction, seed, num_workers)
        if not sources:
            raise ConfigError("data.init_args.sources is empty: name at least one curated directory ({path: ...})")
        self.sources = [s if isinstance(s, ShardSource) else ShardSource(**s) for s in sources]
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"source names {names} repeat: give each source its own name")
        if seq_len < 2:
            raise ConfigError(f"seq_len={seq_len} must be at least 2")
        self.tokenizer_spec = tokenizer
        self.storage_options = storage_options
        self.media = MediaSettings(
            image_backbone, image_backbone_kwargs, image_size, image_augmentation, clip_samples(audio_seconds),
            max_media_bytes,
        )
        self.num_placeholders = {"image": image_tokens, "audio": audio_tokens}
        self.seq_len = seq_len
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._tokenizer: Tokenizer | None = None
        self._readers: list[ShardReader] | None = None
        self._slot_states: dict[int, dict] = {}
        self._consumed = 0
        self._resume: tuple[dict[int, dict], int] | None = None

    # -- tokenizer -----------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The shards' tokenizer, checked to be every source's."""
        if self._tokenizer is None:
            explicit = self.tokenizer_spec.path if self.tokenizer_spec is not None else None
            if explicit and not Path(explicit).is_file():
                raise ConfigError(f"tokenizer path {explicit!r} does not exist: point it at a tokenizer.json")
            texts = {s.name: read_text(join(s.path, TOKENIZER), self.cache_dir, self.storage_options) for s in self.sources}
            text = Path(explicit).read_text() if explicit else texts[self.sources[0].name]
            others = [name for name, t in texts.items() if json.loads(t) != json.loads(text)]
            if others:
                raise ConfigError(
                    f"sources {others} were tokenised with another tokenizer than {explicit or self.sources[0].path}: "
                    "curate every source of a mixture with the same tokenizer"
                )
            tokenizer = Tokenizer.from_str(text)
            declared = getattr(self.tokenizer_spec, "vocab_size", None)
            if self.tokenizer_spec is not None and declared != tokenizer.get_vocab_size():
                raise ConfigError(
                    f"the shards' tokenizer has {tokenizer.get_vocab_size()} tokens, the recipe says vocab_size={declared}: "
                    "set data.init_args.tokenizer.init_args.vocab_size to the tokenizer's size"
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the tokenizer; the CLI links it into the model."""
        return self.tokenizer.get_vocab_size()

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.token_to_id(END_OF_TEXT)
        if eos is None:
            raise ConfigError(f"the shards' tokenizer has no {END_OF_TEXT!r} token: curate with one that does")
        return eos

    @property
    def placeholder_ids(self) -> dict[str, int]:
        """Token id of each modality's placeholder the tokenizer has."""
        ids = {m: self.tokenizer.token_to_id(token) for m, token in PLACEHOLDERS.items()}
        return {m: i for m, i in ids.items() if i is not None}

    # -- the stream ----------------------------------------------------------------------------

    @property
    def readers(self) -> list[ShardReader]:
        if self._readers is None:
            self._readers = [ShardReader(s.path, self.cache_dir, self.storage_options) for s in self.sources]
        return self._readers

    def _spec(self, split: str, batch_size: int) -> StreamSpec:
        chunks = []
        for source, reader in zip(self.sources, self.readers):
            train, val = split_chunks(source.name, reader.chunks, self.seed, self.val_fraction)
            chunks.append(val if split == "val" else train)
        return StreamSpec(
            names=[s.name for s in self.sources], weights=[s.weight for s in self.sources], readers=self.readers,
            chunks=chunks, seq_len=self.seq_len, batch_size=batch_size, eos_id=self.eos_id,
            placeholder_ids=self.placeholder_ids, num_placeholders=self.num_placeholders, seed=self.seed,
            media=self.media,
        )

    def prepare_data(self) -> None:
        """Nothing to build: the shards are ready (``constellation-kit curate``), chunks download as read."""

    def setup(self, stage: str) -> None:
        self.tokenizer  # fail now on a missing or mismatched tokenizer, not in a loader worker

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world()
        states, rotation = self._resume or ({}, 0)
        self._resume = None
        stream = TrainStream(self._spec("train", self.micro_batch_size), rank, world_size, self.num_workers, states, rotation)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_and_world()
        return DataLoader(ValidationStream(self._spec("val", self.micro_batch_size), rank, world_size), batch_size=None,
                          generator=own_generator(self.seed))  # not the global stream: see TextDataModule._loader

    # -- resume --------------------------------------------------------------------------------

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called once per batch that training consumes (after the loader's prefetch): the state a
        # checkpoint must hold is that of the batches trained on, not of those fetched ahead.
        state = drop_stream_state(batch)
        trainer = self.trainer
        if state is not None and (trainer is None or trainer.training):
            self._slot_states[state["slot"]] = state
            self._consumed += 1
        return batch

    @property
    def slots_per_rank(self) -> int:
        return max(1, self.num_workers)

    def data_fingerprint(self) -> dict[str, Any]:
        """What the loader position means; weights are left out (they may change between runs)."""
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "val_fraction": self.val_fraction,
            "sources": ", ".join(f"{s.name}={s.path}" for s in self.sources),
            "tokenizer": hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()[:12],
        }

    def state_dict(self) -> dict[str, Any]:
        """Every slot's position, gathered from all ranks (each rank only sees its own workers' batches)."""
        local = {"slots": list(self._slot_states.values()), "consumed": self._consumed}
        _, world_size = self._rank_and_world()
        gathered = [local]
        if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * world_size
            torch.distributed.all_gather_object(gathered, local)
        stream = {
            "world_size": world_size,
            "slots_per_rank": self.slots_per_rank,
            "consumed": [g["consumed"] for g in gathered],
            "slots": sorted((s for g in gathered for s in g["slots"]), key=lambda s: s["slot"]),
        }
        # One JSON string: a leaf that torch.save and distributed checkpoints store alike.
        return {"stream": json.dumps(stream), "fingerprint": self.data_fingerprint()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_data_fingerprint(state_dict.get("fingerprint"), self.data_fingerprint(), self.allow_data_mismatch)
        stream = json.loads(state_dict["stream"])
        rank, world_size = self._rank_and_world()
        slots = {s["slot"]: s for s in stream["slots"]}
        if stream["world_size"] == world_size and stream["slots_per_rank"] == self.slots_per_rank:
            consumed = stream["consumed"][rank]
            self._slot_states, self._consumed = dict(slots), consumed
            self._resume = (slots, consumed % self.slots_per_rank)
            return
        # Another grid: slots own other chunks, so no saved position maps onto a new slot.
        epochs = {name: max([s["positions"].get(name, [0, 0])[0] for s in slots.values()], default=0) + 1
                  for name in (src.name for src in self.sources)}
        log.warning(
            "resuming with %d rank(s) x %d loader slot(s) where the checkpoint had %d x %d: every source restarts at a "
            "fresh shuffle (epochs %s); documents read in the interrupted epoch may be read once more",
            world_size, self.slots_per_rank, stream["world_size"], stream["slots_per_rank"], epochs,
        )
        fresh = {"draws": 0, "batches": 0, "positions": {n: [e, 0] for n, e in epochs.items()},
                 "text": {"docs": [], "offset": 0, "first_doc": 0}, "media": []}
        states = {slot: {**fresh, "slot": slot} for slot in range(world_size * self.slots_per_rank)}
        self._slot_states, self._consumed = {}, 0
        self._resume = (states, 0)
