import numpy as np
import pytest

from constellation_kit.data import IGNORE_INDEX, MultiQueryAssociativeRecall, PasskeyRetrieval, SyntheticDataModule
from constellation_kit.errors import ConfigError


def test_mqar_targets_are_the_values_of_the_queried_keys() -> None:
    task = MultiQueryAssociativeRecall(vocab_size=64, num_kv_pairs=6)
    inputs, targets = task.generate(200, 48, seed=3)
    assert inputs.shape == targets.shape == (200, 48)
    for row_in, row_t in zip(inputs, targets):
        keys, values = row_in[0:12:2], row_in[1:12:2]
        assert len(set(keys)) == 6 and len(set(values)) == 6  # distinct within a sequence
        assert ((1 <= keys) & (keys < 32)).all() and ((32 <= values) & (values < 64)).all()
        pairs = dict(zip(keys, values))
        scored = np.flatnonzero(row_t != IGNORE_INDEX)
        assert len(scored) == 6 and (scored >= 12).all() and ((scored - 12) % 2 == 0).all()  # even offsets
        assert sorted(row_in[scored]) == sorted(keys)  # every key queried once
        assert all(row_t[p] == pairs[row_in[p]] for p in scored)


def test_mqar_is_seeded_and_prefers_short_gaps() -> None:
    task = MultiQueryAssociativeRecall(vocab_size=256, num_kv_pairs=4)
    a, b, c = (task.generate(400, 128, seed=s)[1] for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    first_query = np.argmax(a != IGNORE_INDEX, axis=1) - 8
    assert np.median(first_query) < 30  # power law: a quarter of the 60-slot space or less


def test_mqar_rejects_a_too_short_sequence() -> None:
    with pytest.raises(ConfigError, match="4 \\* num_kv_pairs"):
        MultiQueryAssociativeRecall(vocab_size=64, num_kv_pairs=8).generate(1, 30, 0)


def test_passkey_answer_is_the_hidden_key() -> None:
    task = PasskeyRetrieval(vocab_size=40, passkey_digits=5)
    inputs, targets = task.generate(50, 100, seed=0)
    for row_in, row_t in zip(inputs, targets):
        mark = int(np.flatnonzero(row_in == PasskeyRetrieval.MARK)[0])
        key = row_in[mark + 1 : mark + 6]
        assert (row_in[mark + 6] == PasskeyRetrieval.MARK) and (key < 10).all()
        assert row_in[-5] == PasskeyRetrieval.QUERY and np.array_equal(row_in[-4:], key[:4])
        assert np.array_equal(row_t[-5:], key) and (row_t[:-5] == IGNORE_INDEX).all()
    depths = [int(np.flatnonzero(r == PasskeyRetrieval.MARK)[0]) for r in inputs]
    assert min(depths) < 30 and max(depths) > 60  # the key is hidden at varying depths


def test_datamodule_batches_and_validation_length() -> None:
    dm = SyntheticDataModule(MultiQueryAssociativeRecall(vocab_size=64, num_kv_pairs=4), seq_len=32, val_seq_len=64,
                             global_batch_size=8, num_train_examples=40, num_val_examples=16)
    dm.setup("fit")
    assert dm.vocab_size == 64
    train = next(iter(dm.train_dataloader()))
    val = next(iter(dm.val_dataloader()))
    assert train["tokens"].shape == (8, 32) and val["tokens"].shape == (8, 64)
    assert (train["document_ids"] == 0).all() and ((train["targets"] != IGNORE_INDEX).sum(1) == 4).all()
