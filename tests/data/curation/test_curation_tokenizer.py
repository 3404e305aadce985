"""Training the BPE: special tokens at stable ids, byte-level round trip, bad tokenizer files refused."""

from pathlib import Path

import pytest

from constellation_kit.data.curation.tokenizer import SPECIAL_TOKENS, check_tokenizer, train_tokenizer
from constellation_kit.errors import ConfigError

TEXTS = ["the quick brown fox jumps over the lazy dog. " * 20, "def f(x):\n    return x + 1\n" * 20, "naïve café ✓"]


def test_special_tokens_keep_the_recipes_ids(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(iter(TEXTS), 300, tmp_path / "t.json")
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    # tiny.yaml and xl.yaml list ["<|endoftext|>", "<|image|>", "<|audio|>"]: the same first three ids.
    assert SPECIAL_TOKENS[:3] == ["<|endoftext|>", "<|image|>", "<|audio|>"]
    assert tokenizer.get_vocab_size() == 300
    for text in TEXTS + ["unseen ☃ text \x7f"]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("a <|image|> b", add_special_tokens=False).ids.count(1) == 1
    assert check_tokenizer(tmp_path / "t.json").get_vocab_size() == 300


def test_bad_settings_and_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(iter(TEXTS), 100, tmp_path / "t.json")
    with pytest.raises(ConfigError, match="must start with"):
        train_tokenizer(iter(TEXTS), 300, tmp_path / "t.json", ["<|pad|>", "<|endoftext|>"])
    with pytest.raises(ConfigError, match="does not exist"):
        check_tokenizer(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a tokenizers JSON"):
        check_tokenizer(tmp_path / "bad.json")
