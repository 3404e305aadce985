"""Media rows: the image or audio file must decode; its bytes are hashed for exact deduplication."""

import hashlib
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from constellation_kit.data.curation.reader import SKIP_PREFIX
from constellation_kit.data.manifest import MODALITIES
from constellation_kit.data.media import DEFAULT_MAX_MEDIA_BYTES, MediaError, decode_audio, decode_image

MEDIA_HASH = "media_sha256"
"""The metadata key holding the SHA-256 of a media row's file (absent on text rows)."""


def media_of(metadata: dict) -> tuple[str, str] | None:
    """``(modality, path)`` of a media row's metadata, or ``None`` for a text row."""
    for modality in MODALITIES:
        if metadata.get(modality):
            return modality, metadata[modality]
    return None


class MediaCheck(PipelineStep):
    """Decode every media row's file with the training loader's own checks (:mod:`constellation_kit.data.media`).

    A file that is missing, unreadable, corrupt, over ``max_media_bytes``, a decompression bomb or
    (audio) holds NaN samples is skipped and counted as ``media_<reason>`` (``media_missing``,
    ``media_corrupt``, ...): the training loader would have had to skip it at every epoch. A file that
    decodes gets ``metadata["media_sha256"]``, the hash of its bytes, which exact deduplication uses
    beside the caption. Text rows pass through untouched.
    """

    name = "media check"
    type = "🔻 - FILTER"

    def __init__(self, max_media_bytes: int | None = DEFAULT_MAX_MEDIA_BYTES) -> None:
        super().__init__()
        self.max_media_bytes = max_media_bytes

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for document in data:
            media = media_of(document.metadata)
            if media is None:
                yield document
                continue
            modality, path = media
            with self.track_time():
                try:
                    # A full decode, not a header check: a truncated JPEG fails only on its last bytes.
                    (decode_image if modality == "image" else decode_audio)(path, max_bytes=self.max_media_bytes)
                except MediaError as error:
                    self.stat_update(f"{SKIP_PREFIX}media_{error.reason}")
                    continue
                document.metadata[MEDIA_HASH] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            self.stat_update(f"{modality}_rows")
            yield document
