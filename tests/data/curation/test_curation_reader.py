"""The reader and media check: every kind of bad input skipped and counted by reason, never a crash."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from constellation_kit.data.curation.inputs import list_input_files
from constellation_kit.data.curation.junk import text_skip_reason
from constellation_kit.data.curation.media_check import MEDIA_HASH, MediaCheck
from constellation_kit.data.curation.reader import CurationReader
from constellation_kit.errors import ConfigError

PROSE = "the quick brown fox jumps over the lazy dog"


def read(files: list[Path], rank: int = 0, world_size: int = 1) -> tuple[list, dict]:
    reader = CurationReader([str(f) for f in files])
    documents = list(reader.run(rank=rank, world_size=world_size))
    return documents, {k: v.total for k, v in reader.stats.stats.items()}


def test_jsonl_lines_of_every_bad_kind_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps({"text": PROSE}).encode(),
        b'{"text": "caf\xe9"}',                     # latin-1, not UTF-8
        b'{"text": "cut sho',                       # truncated
        b"<html>",                                  # not JSON
        b'{"title": "x"}', b'"a string"',           # no text
        b'{"text": " \\n "}',                       # whitespace only
        json.dumps({"text": "ab\x00cd"}).encode(),  # binary
        b"",                                        # a blank line is no record
        json.dumps({"caption": PROSE}).encode(),    # the second text key
    ]))
    documents, stats = read([path])
    assert [d.text for d in documents] == [PROSE, PROSE]
    assert {k: v for k, v in stats.items() if k.startswith("skipped_")} == {
        "skipped_invalid_utf8": 1, "skipped_truncated_json": 1, "skipped_invalid_json": 1,
        "skipped_no_text": 2, "skipped_empty": 1, "skipped_binary": 1,
    }
    assert stats["documents_in"] == 9


def test_text_gzip_and_parquet_files_and_broken_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(PROSE)
    (tmp_path / "b.txt").write_bytes("caf\xe9".encode("latin-1"))
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gzipped " + PROSE}) + "\n")
    (tmp_path / "d.jsonl.gz").write_bytes(b"not gzip at all")
    pq.write_table(pa.table({"text": ["parquet " + PROSE, ""], "id": [1, 2]}), tmp_path / "e.parquet")
    (tmp_path / "f.parquet").write_bytes(b"PAR1 garbage")
    (tmp_path / "ignored.bin").write_bytes(b"\x00")          # not a known ending: a folder leaves it out
    files = list_input_files([str(tmp_path)])
    assert [Path(f).name for f in files] == ["a.txt", "b.txt", "c.jsonl.gz", "d.jsonl.gz", "e.parquet", "f.parquet"]
    documents, stats = read([Path(f) for f in files])
    assert [d.text for d in documents] == [PROSE, "gzipped " + PROSE, "parquet " + PROSE]
    assert stats["skipped_invalid_utf8"] == 1 and stats["skipped_empty"] == 1
    assert stats["skipped_unreadable_file"] == 2


def test_tasks_share_the_files_round_robin(tmp_path: Path) -> None:
    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.txt")
        files[-1].write_text(f"{PROSE} {i}")
    seen = [d.text[-1] for rank in range(2) for d in read(files, rank, 2)[0]]
    assert sorted(seen) == list("01234") and seen[:3] == list("024")


def test_missing_input_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        list_input_files([str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="no input files"):
        list_input_files([str(tmp_path)])


def test_text_skip_reason() -> None:
    assert text_skip_reason(PROSE) is None
    assert text_skip_reason("\t\n ") == "empty"
    assert text_skip_reason("a\x00b") == "binary"
    assert text_skip_reason(json.loads('"lone \\ud800 surrogate"')) == "invalid_utf8"
    assert text_skip_reason("x" * 1000 + "\x00") == "binary"             # one NUL is enough
    assert text_skip_reason("x" * 99 + "\x07") is None           # 1% control characters: still text
    assert text_skip_reason("x" * 98 + "\x07\x07") == "binary"


def test_media_rows_checked_and_hashed(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    rows = [{"image": "ok.png", "text": "red"}, {"image": "bad.png", "text": "x"}, {"audio": "gone.wav", "text": "y"},
            {"image": 3, "text": "z"}, {"image": "ok.png", "audio": "ok.png", "text": "both"}, {"text": PROSE}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    reader = CurationReader([str(manifest)])
    check = MediaCheck()
    documents = list(check.run(reader.run()))
    assert [d.text for d in documents] == ["red", PROSE]
    assert documents[0].metadata["image"] == str((tmp_path / "ok.png").resolve())
    assert len(documents[0].metadata[MEDIA_HASH]) == 64 and MEDIA_HASH not in documents[1].metadata
    assert check.stats["skipped_media_corrupt"].total == 1 and check.stats["skipped_media_missing"].total == 1
    assert reader.stats["skipped_bad_media_path"].total == 2


def test_control_characters_are_unicode_cc_but_whitespace() -> None:
    import unicodedata

    from constellation_kit.data.curation.junk import _CONTROL

    for code in range(0x3000):
        ch = chr(code)
        expected = unicodedata.category(ch) == "Cc" and ch not in "\t\n\v\f\r"
        assert bool(_CONTROL.match(ch)) == expected, hex(code)
