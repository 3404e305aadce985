from pathlib import Path

import numpy as np
import pytest
import torch

from constellation_kit.data import ByteLevelBPE, PythonStdlibSource, TextDataModule
from constellation_kit.data.splits import is_validation
from constellation_kit.errors import ConfigError


@pytest.fixture(scope="module")
def datamodule() -> TextDataModule:
    dm = TextDataModule(
        source=PythonStdlibSource(max_documents=30),
        tokenizer=ByteLevelBPE(vocab_size=512),
        seq_len=32,
        global_batch_size=4,
        val_fraction=0.2,
    )
    dm.setup("fit")
    return dm


def test_batches_are_packed_windows(datamodule: TextDataModule) -> None:
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"tokens", "targets", "document_ids"}
    assert all(v.shape == (4, 32) and v.dtype == torch.int64 for v in batch.values())
    assert int(batch["tokens"].max()) < datamodule.vocab_size


def test_no_document_in_both_splits(datamodule: TextDataModule) -> None:
    documents = list(datamodule.source.documents())
    val = {d.id for d in documents if is_validation(d.id, datamodule.seed, datamodule.val_fraction)}
    assert val and len(val) < len(documents)
    val_text = "".join(d.text for d in documents if d.id in val)
    # Decoding the validation windows gives back only validation text.
    window = datamodule.val_dataset.packed.tokens[0]
    assert datamodule.tokenizer.decode(window.tolist())[:40] in val_text


def test_tokenizer_round_trips_and_is_cached(datamodule: TextDataModule, session_cache) -> None:
    text = "def f(x):\n    return x ** 2  # ünïcode\n"
    assert datamodule.tokenizer.decode(datamodule.tokenizer.encode(text).ids) == text
    assert list((session_cache / "tokenizers").glob("bpe-512-*.json"))


def test_same_seed_same_data(tmp_path: Path) -> None:
    # Two caches: each build trains its own tokenizer and tokenises the corpus itself, so this compares two
    # independent builds (as on two machines), not one cached build with itself. One source object: its
    # directory walk is the slow part, and what is compared is what each build makes of the same files.
    source = PythonStdlibSource(max_documents=12)

    def build(cache: str) -> TextDataModule:
        dm = TextDataModule(
            source=source, tokenizer=ByteLevelBPE(vocab_size=400), seq_len=32,
            val_fraction=0.2, cache_dir=str(tmp_path / cache),
        )
        dm.setup("fit")
        return dm

    a, b = build("a"), build("b")
    assert a._split_cache_path() != b._split_cache_path() and b._split_cache_path().is_file()
    assert a.tokenizer.to_str() == b.tokenizer.to_str()
    np.testing.assert_array_equal(a.train_dataset.packed.tokens, b.train_dataset.packed.tokens)
    np.testing.assert_array_equal(a.val_dataset.packed.tokens, b.val_dataset.packed.tokens)
    assert list(a.train_dataloader().sampler) == list(b.train_dataloader().sampler)


def test_resume_state_skips_what_was_consumed(datamodule: TextDataModule) -> None:
    order = list(datamodule.train_dataloader().sampler)
    datamodule.load_state_dict({"epoch": 0, "samples": 8})
    assert list(datamodule.train_dataloader().sampler) == order[8:]
    state = datamodule.state_dict()
    assert (state["epoch"], state["samples"]) == (0, 8)
    assert state["fingerprint"] == datamodule.data_fingerprint()  # what the position means, checked on resume


def test_bad_val_fraction_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="val_fraction=1.5"):
        TextDataModule(val_fraction=1.5)
