"""Row-at-a-time packing equals the whole-corpus packers it streams (pack_documents, pack_media_items)."""

import numpy as np
import pytest

from constellation_kit.data.media_rows import item_tokens, pack_media_items
from constellation_kit.data.packing import pack_documents
from constellation_kit.data.shards import ShardItem
from constellation_kit.data.stream_packing import MediaPacker, TextPacker


@pytest.mark.parametrize("seed", range(8))
def test_text_packer_cuts_the_windows_pack_documents_cuts(seed: int):
    rng = np.random.default_rng(seed)
    seq_len = int(rng.integers(2, 24))
    documents = [rng.integers(0, 50, size=int(rng.integers(0, 60))) for _ in range(40)]
    reference = pack_documents(documents, seq_len, eos_id=99)
    packer, windows = TextPacker(seq_len, 99), []
    for i, doc in enumerate(documents):
        packer.add((0, i, 0, i), doc)
        while (window := packer.pop()) is not None:
            windows.append(window)
    assert np.array_equal(np.stack([w[0] for w in windows]), reference.tokens)
    assert np.array_equal(np.stack([w[1] for w in windows]), reference.document_ids)


def test_text_packer_state_restores_the_rest_of_the_stream():
    rng = np.random.default_rng(0)
    documents = {i: rng.integers(0, 50, size=int(rng.integers(1, 30))) for i in range(30)}
    straight, windows = TextPacker(16, 99), []
    restored_windows, snapshot = [], None
    for i, doc in documents.items():
        straight.add((0, i, 0, i), doc)
        while (window := straight.pop()) is not None:
            windows.append(window)
        if i == 12:
            snapshot, cut = straight.state(), len(windows)
    restored = TextPacker(16, 99)
    restored.restore(snapshot, lambda ref: ShardItem(documents[ref[1]].astype(np.int32)))
    for i in range(13, 30):
        restored.add((0, i, 0, i), documents[i])
        while (window := restored.pop()) is not None:
            restored_windows.append(window)
    assert len(restored_windows) == len(windows) - cut > 0
    for a, b in zip(restored_windows, windows[cut:]):
        assert np.array_equal(a[0], b[0])


def test_media_packer_fills_rows_as_pack_media_items():
    rng = np.random.default_rng(1)
    placeholders, counts = {"image": 7, "audio": 8}, {"image": 4, "audio": 3}
    items = [ShardItem(rng.integers(10, 50, size=int(rng.integers(1, 12))).astype(np.int32),
                       image=b"x" if i % 2 else b"", audio=b"" if i % 2 else b"y") for i in range(30)]
    packer, rows = MediaPacker(24, 99, placeholders, counts), []
    for i, item in enumerate(items):
        if (row := packer.add((1, i, 0, i), item)) is not None:
            rows.append(row[1])
    rows.append(packer.flush()[1])
    encoded = [item_tokens(placeholders[it.modality], counts[it.modality], it.tokens.tolist(), 99, 25) for it in items]
    reference = pack_media_items(encoded, [counts[it.modality] for it in items], 24, 99)
    assert np.array_equal(np.concatenate([r.tokens for r in rows]), reference.tokens)
    assert np.array_equal(np.concatenate([r.predictable for r in rows]), reference.predictable)
