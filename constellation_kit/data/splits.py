"""Train/validation split by document, decided by a seeded hash of the document id."""

import hashlib


def is_validation(document_id: str, seed: int, fraction: float) -> bool:
    """Whether a document is held out for validation.

    Hashing the id (not drawing from an RNG in iteration order) makes the split independent of
    how many documents there are and in what order they arrive: adding files to a corpus never
    moves an existing document from train to validation or back.
    """
    digest = hashlib.sha256(f"{seed}:{document_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
