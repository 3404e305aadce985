"""The standard-library source: one directory walk per instance, a stable order and fingerprint."""

from pathlib import Path

import pytest

from constellation_kit.data import PythonStdlibSource


def test_the_standard_library_is_walked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    walks = []
    rglob = Path.rglob

    def counting_rglob(self: Path, pattern: str, *args, **kwargs):
        walks.append(pattern)
        return rglob(self, pattern, *args, **kwargs)

    monkeypatch.setattr(Path, "rglob", counting_rglob)
    source = PythonStdlibSource(max_documents=5)
    fingerprint = source.fingerprint()
    documents = list(source.documents())
    assert source.fingerprint() == fingerprint
    assert len(walks) == 1
    assert len(documents) == 5
    # A fresh instance walks again and chooses the same files in the same order.
    again = PythonStdlibSource(max_documents=5)
    assert [d.id for d in again.documents()] == [d.id for d in documents]
    assert again.fingerprint() == fingerprint
    assert len(walks) == 2



def test_documents_that_are_not_utf8_are_kept_and_counted(tmp_path: Path) -> None:
    (tmp_path / "latin1.py").write_bytes("# café\nx = 1\n".encode("latin-1"))  # 0xe9: not UTF-8
    (tmp_path / "cut.py").write_bytes(("x" * 9 + "é").encode("utf-8"))  # the cap cuts é (2 bytes) in half
    (tmp_path / "fine.py").write_text("y = 'ü'\n", encoding="utf-8")
    source = PythonStdlibSource(max_bytes_per_document=10)
    source.root = tmp_path  # a corpus made here, not the interpreter's
    documents = {d.id: d.text for d in source.documents()}
    assert documents == {"latin1.py": "# caf\ufffd\nx =", "cut.py": "x" * 9, "fine.py": "y = 'ü'\n"}
    assert source.non_utf8_ids == {"latin1.py"}  # the cut is the cap's doing, not the file's
    list(source.documents())
    assert len(source.non_utf8_ids) == 1  # counted once, however often the corpus is read
