import numpy as np

from constellation_kit.data import IGNORE_INDEX, PackedDataset, pack_documents

EOS = 99


def test_windows_overlap_by_one_and_record_documents() -> None:
    docs = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9])]
    packed = pack_documents(docs, seq_len=4, eos_id=EOS)
    # stream: 1 2 3 EOS 4 5 EOS 6 7 8 9 EOS  (12 tokens) -> (12 - 1) // 4 = 2 windows of 5
    assert packed.tokens.tolist() == [[1, 2, 3, EOS, 4], [4, 5, EOS, 6, 7]]
    assert packed.document_ids.tolist() == [[0, 0, 0, 0, 1], [1, 1, 1, 2, 2]]


def test_targets_never_cross_a_document_boundary() -> None:
    packed = pack_documents([np.array([1, 2, 3]), np.array([4, 5])], seq_len=6, eos_id=EOS)
    item = PackedDataset(packed)[0]
    assert item["tokens"].tolist() == [1, 2, 3, EOS, 4, 5]
    # EOS is predicted (it ends document 0); the first token of document 1 is not.
    assert item["targets"].tolist() == [2, 3, EOS, IGNORE_INDEX, 5, EOS]
    assert item["document_ids"].tolist() == [0, 0, 0, 0, 1, 1]


def test_too_little_text_is_an_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="cannot fill one window"):
        pack_documents([np.array([1])], seq_len=8, eos_id=EOS)
