"""Tokenised shards: the on-disk (or object-store) form of a curated corpus, written and read here.

A curated source directory ``DIR`` (``constellation-kit curate`` writes it) holds::

    DIR/report.json       what curation kept and dropped
    DIR/tokenizer.json    the ``tokenizers`` tokenizer the shards were tokenised with
    DIR/shards/           a litdata optimized dataset: index.json + chunk files

Each item is ``{"tokens": int32 (L,) ids of one document or caption, no special tokens,
"image": encoded image file bytes or b"", "audio": encoded audio file bytes or b""}``. ``DIR`` may
be a local path or ``s3://bucket/prefix``. litdata reads it (Lightning's own streaming format:
chunked, indexed, downloaded chunk by chunk with look-ahead, kept in a bounded local cache), so
nothing is re-tokenised and no corpus is held in memory at start-up.
"""

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from constellation_kit.errors import ConfigError

log = logging.getLogger(__name__)

SHARDS = "shards"
TOKENIZER = "tokenizer.json"
MODALITIES = ("image", "audio")


@dataclass
class ShardSource:
    """One curated source of a mixture: where its shards live and how much of the stream it gets.

    Args:
        path: the curated directory (``DIR`` above), local or ``s3://bucket/prefix``.
        weight: the source's share of the documents drawn, relative to the other sources' weights
            (they need not sum to 1). Changing it needs no re-curation.
        name: how checkpoints and logs name the source; the directory's last part by default.
            A resumed run finds each source's position by this name.
    """

    path: str
    weight: float = 1.0
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ConfigError(f"source {self.path!r} has weight={self.weight}: weights must be positive")
        if self.name is None:
            self.name = self.path.rstrip("/").rsplit("/", 1)[-1] or self.path


@dataclass(frozen=True)
class ShardItem:
    """One stored item: a document's ``tokens`` (L,) int32, or a caption's with its media bytes."""

    tokens: np.ndarray
    image: bytes = b""
    audio: bytes = b""

    @property
    def modality(self) -> str:
        """``"image"``, ``"audio"`` or ``"text"``: an item with media is that medium's caption."""
        return "image" if self.image else "audio" if self.audio else "text"


def join(base: str, *parts: str) -> str:
    """``base/parts...`` for a local path or a URL alike (``os.path.join`` would mangle ``s3://``)."""
    return "/".join([base.rstrip("/"), *parts])


def is_remote(path: str) -> bool:
    return "://" in path


def write_shards(directory: str | Path, items: Iterable[ShardItem], tokenizer_json: str, chunk_size: int = 256) -> Path:
    """Write ``items`` as a curated source directory (the format above), ``chunk_size`` items a chunk.

    Local only: upload the directory to object storage as it is (``aws s3 sync DIR s3://...``).
    """
    from litdata.streaming.writer import BinaryWriter

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TOKENIZER).write_text(tokenizer_json)
    writer = BinaryWriter(str(directory / SHARDS), chunk_size=chunk_size)
    count = 0
    for count, item in enumerate(items, start=1):
        writer[count - 1] = {
            "tokens": np.ascontiguousarray(item.tokens, dtype=np.int32), "image": bytes(item.image), "audio": bytes(item.audio)
        }
    if count == 0:
        raise ConfigError(f"no items to write into {directory}")
    writer.done()
    writer.merge()
    return directory


def _allow_plain_http(storage_options: dict[str, Any] | None) -> None:
    """Let litdata's fast chunk downloader (obstore) reach an ``http://`` endpoint.

    litdata builds obstore's S3 store from the boto3 client's endpoint but never passes obstore's
    ``allow_http``, so every chunk GET from a plain-http S3-compatible server (MinIO on a private
    network, a test server on loopback) fails with "builder error" while boto3 (index.json) works.
    The option only permits http; https endpoints are unaffected.
    """
    endpoint = (storage_options or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL", "")
    if endpoint.startswith("http://"):
        from litdata.streaming import downloader

        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"


class ShardReader:
    """Random access to one source's items, by global item index, through litdata.

    Opened lazily, in the process that reads (a loader worker): litdata's download thread and
    file handles must not cross a fork. ``chunks`` lists each chunk's ``(first, end)`` item range.
    """

    def __init__(self, path: str, cache_dir: Path, storage_options: dict[str, Any] | None = None) -> None:
        self.path = path
        self.shards = join(path, SHARDS)
        self.cache_dir = cache_dir
        self.storage_options = storage_options
        self._dataset = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None, "_pid": None}

    @property
    def dataset(self):
        if self._dataset is None or self._pid != os.getpid():
            from litdata import StreamingDataset

            _allow_plain_http(self.storage_options)
            # One cache folder per source URL: litdata names its own by a hash of the input too, but
            # under a folder that must be writable and bounded; ours sits in the kit's cache.
            cache = self.cache_dir / "streams" / hashlib.sha256(self.shards.encode()).hexdigest()[:16]
            cache.mkdir(parents=True, exist_ok=True)
            try:
                dataset = StreamingDataset(
                    self.shards, cache_dir=str(cache) if is_remote(self.shards) else None,
                    storage_options=self.storage_options or {},
                )
            except (FileNotFoundError, ValueError) as error:
                raise ConfigError(
                    f"cannot read shards at {self.shards!r} ({error}): point the source's path at a directory "
                    "`constellation-kit curate` wrote (it holds shards/index.json)"
                ) from error
            # Whole chunks into the local cache, not one ranged GET per item (litdata's default
            # for random access): items are read in chunk order, so a chunk is fetched once.
            dataset._on_demand_bytes = False
            self._dataset, self._pid = dataset, os.getpid()
        return self._dataset

    @cached_property
    def chunks(self) -> list[tuple[int, int]]:
        """``(first item, end)`` of every chunk, in storage order, from the index alone (no chunk is read)."""
        bounds, first = [], 0
        for start, end in self.dataset.region_of_interest:
            bounds.append((first, first + end - start))
            first += end - start
        return bounds

    def __len__(self) -> int:
        return self.chunks[-1][1] if self.chunks else 0

    def read(self, index: int, chunk: int, upcoming: list[int] | None = None, last: bool = False) -> ShardItem:
        """Item ``index`` (in chunk ``chunk``). ``upcoming`` chunks are queued for download ahead;
        ``last`` says no further item will be read, so the download thread may stop."""
        from litdata.streaming.sampler import ChunkedIndex

        first, end = self.chunks[chunk]
        raw = self.dataset[
            ChunkedIndex(index=index, chunk_index=chunk, chunk_indexes=upcoming, is_last_index=last, chunk_size=end - first)
        ]
        return ShardItem(np.asarray(raw["tokens"], dtype=np.int32), bytes(raw.get("image", b"")), bytes(raw.get("audio", b"")))

    def chunk_of(self, index: int) -> int:
        starts = [first for first, _ in self.chunks]
        return int(np.searchsorted(starts, index, side="right") - 1)


def read_text(path: str, cache_dir: Path, storage_options: dict[str, Any] | None = None) -> str:
    """A small file's text from a local path or ``s3://`` (``DIR/tokenizer.json``, ``DIR/report.json``)."""
    if not is_remote(path):
        if not Path(path).is_file():
            raise ConfigError(f"{path!r} does not exist: a curated source directory holds {TOKENIZER} beside shards/")
        return Path(path).read_text()
    if not path.startswith("s3://"):
        raise ConfigError(f"{path!r}: only local paths and s3:// URLs are supported")
    import boto3
    import botocore.exceptions

    bucket, _, key = path.removeprefix("s3://").partition("/")
    try:
        body = boto3.client("s3", **(storage_options or {})).get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as error:
        raise ConfigError(f"cannot read {path!r}: {error}") from error
    return body.decode()
