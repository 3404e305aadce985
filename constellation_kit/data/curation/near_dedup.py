"""Near-duplicate removal: MinHash signatures, LSH buckets, clusters, one document kept per cluster.

The four stages are datatrove's (``MinhashDedup*``). What is added here is the choice of the LSH
shape from a threshold: with ``b`` bands of ``r`` hashes, two documents whose shingle sets have
Jaccard similarity ``s`` share at least one band, and so are found, with probability

    P(s) = 1 - (1 - s^r)^b                      (Leskovec, Rajaraman, Ullman, *Mining of Massive Datasets*, 3.4)

``threshold`` is read as a promise: pairs at or above it are found with probability at least
``recall`` (0.95). Of the shapes within the ``num_hashes`` budget that keep it, the one with the
most hashes per band is taken: the steepest S-curve, so the fewest pairs well below the threshold
are merged. datatrove does not verify candidate pairs, so a false positive is a removal.
"""

import dataclasses
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.utils.hashing import HashConfig

from constellation_kit.data.curation.media_check import media_of
from constellation_kit.data.curation.word_tokenizer import WORDS
from constellation_kit.errors import ConfigError


def collision_probability(similarity: float, bands: int, rows: int) -> float:
    """P(two documents of Jaccard ``similarity`` share an LSH band) with ``bands`` bands of ``rows`` hashes."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def lsh_shape(threshold: float, num_hashes: int, recall: float = 0.95) -> tuple[int, int]:
    """``(bands, rows)``: the most rows per band such that ``bands * rows <= num_hashes`` and
    ``P(threshold) >= recall``."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"near_dedup threshold={threshold}: a Jaccard similarity strictly between 0 and 1 (0.8 is usual)")
    shapes = [(num_hashes // rows, rows) for rows in range(1, num_hashes + 1)]
    good = [(b, r) for b, r in shapes if b >= 1 and collision_probability(threshold, b, r) >= recall]
    if not good:
        raise ConfigError(
            f"near_dedup: no LSH shape within num_hashes={num_hashes} finds pairs at Jaccard {threshold} with "
            f"probability {recall}: raise num_hashes (112 or more suits thresholds from 0.7)"
        )
    return max(good, key=lambda shape: shape[1])


class _TextOnlySignature(MinhashDedupSignature):
    """datatrove's signature stage, with media rows given no shingles (so never near-duplicates).

    A caption says little about its picture ("a red circle"): similar captions on different files
    are different examples. Media rows are deduplicated exactly (same file, same caption) instead.
    datatrove skips a document with no n-gram, keeping its position in the stream.
    """

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        def text_only(documents: DocumentsPipeline) -> DocumentsPipeline:
            for document in documents:
                if media_of(document.metadata) is not None:
                    document = dataclasses.replace(document, text="")
                yield document

        return super().run(text_only(data), rank, world_size)


class NearDedup:
    """MinHash LSH near-duplicate removal over word ``n_grams`` of normalised text (lower case, no punctuation).

    Documents found similar are joined into clusters (A~B and B~C make one cluster); one of each
    cluster is kept and the rest are removed and counted as ``near_duplicates_removed``. Documents
    of fewer than ``n_grams`` words have no shingle and are never near-duplicates (exact
    deduplication still sees them).

    Args:
        enabled: ``false`` skips near-deduplication.
        threshold: the Jaccard similarity from which pairs are found with probability >= ``recall``.
        num_hashes: the MinHash budget (hashes per document) the LSH shape is chosen within.
        recall: the probability promised at ``threshold``.
        n_grams: words per shingle; 5 as in FineWeb and Gopher.
        seed: the hash functions' seed, the same in every task.
    """

    def __init__(self, enabled: bool = True, threshold: float = 0.8, num_hashes: int = 120, recall: float = 0.95,
                 n_grams: int = 5, seed: int = 1) -> None:
        self.enabled = enabled
        self.threshold = threshold
        self.num_hashes = num_hashes
        self.recall = recall
        self.n_grams = n_grams
        self.seed = seed
        self.bands, self.rows = lsh_shape(threshold, num_hashes, recall)

    def config(self) -> MinhashConfig:
        return MinhashConfig(n_grams=self.n_grams, num_buckets=self.bands, hashes_per_bucket=self.rows,
                             seed=self.seed, hash_config=HashConfig(precision=64))

    def signature(self, work: Path) -> MinhashDedupSignature:
        """Stage 1, in every task: one signature per document, split into the bands."""
        return _TextOnlySignature(output_folder=str(work / "sigs"), config=self.config(), language=WORDS)

    def buckets(self, work: Path) -> MinhashDedupBuckets:
        """Stage 2, one task per band: documents with an identical band are candidate pairs."""
        return MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=self.config())

    def cluster(self, work: Path) -> MinhashDedupCluster:
        """Stage 3, one task: union-find over the pairs; all but one of each cluster to remove."""
        return MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=self.config())

    def filter(self, work: Path) -> MinhashDedupFilter:
        """Stage 4, in every task: drop the listed positions from the stream stage 1 saw."""
        return MinhashDedupFilter(input_folder=str(work / "remove"))
