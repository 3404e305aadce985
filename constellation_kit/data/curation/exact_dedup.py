"""Exact deduplication: documents with the same content hash, all but one removed (datatrove's three stages)."""

from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.utils.hashing import HashConfig

from constellation_kit.data.curation.media_check import MEDIA_HASH


def dedup_content(document: Document) -> str:
    """What two documents must share to be exact duplicates: the text, and for a media row the media's hash.

    Two rows with one caption and different pictures ("a red circle") are different examples; two
    rows with one picture and different captions are too (COCO gives each image five). Only the same
    caption on the same bytes is a duplicate.
    """
    media_hash = document.metadata.get(MEDIA_HASH)
    return document.text if media_hash is None else f"{media_hash}\x00{document.text}"


class ExactDedup:
    """Exact deduplication by a 64-bit xxhash of :func:`dedup_content` (datatrove's ``ExactDedup*`` stages).

    Of each group of identical documents the first in input order is kept (datatrove breaks ties by
    task, then by position in the task's stream); the others are removed and counted as
    ``exact_duplicates_removed``. With 64-bit hashes two different documents collide with
    probability about ``n² / 2⁶⁵``: one in 37 million for a billion documents.

    Args:
        enabled: ``false`` keeps exact duplicates (near-deduplication still removes them, counted there).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def config(self) -> ExactDedupConfig:
        return ExactDedupConfig(content_getter=dedup_content, hash_config=HashConfig(precision=64))

    def signature(self, work: Path) -> ExactDedupSignature:
        """Stage 1, in every task: hash each document of the task's stream."""
        return ExactDedupSignature(output_folder=str(work / "sigs"), config=self.config())

    def find(self, work: Path) -> ExactFindDedups:
        """Stage 2, one task: merge the sorted hashes of all tasks, list the duplicates' positions."""
        return ExactFindDedups(data_folder=str(work / "sigs"), output_folder=str(work / "dups"), config=self.config())

    def filter(self, work: Path) -> ExactDedupFilter:
        """Stage 3, in every task: drop the listed positions from the same stream as stage 1 saw."""
        return ExactDedupFilter(data_folder=str(work / "dups"), config=self.config())
