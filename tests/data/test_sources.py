"""The standard-library source: one directory walk per instance, a stable order and fingerprint."""

import os
from pathlib import Path

import pytest

from constellation_kit.data import PythonStdlibSource
from constellation_kit.data import sources


def test_the_standard_library_is_walked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    walks = []
    walk = os.walk

    def counting_walk(top, *args, **kwargs):
        walks.append(top)
        return walk(top, *args, **kwargs)

    monkeypatch.setattr(sources.os, "walk", counting_walk)
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


def test_installed_packages_and_tests_are_never_documents_nor_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ["json/__init__.py", "json/decoder.py", "os.py", "notes.txt", "email/mime/text.py",
                 "site-packages/torch/nn.py", "dist-packages/x.py", "test/test_os.py", "json/tests/t.py",
                 "test_support.py", "idlelib/run.py", "unittest/test_case/a.py", "contest.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    visited = []
    walk = os.walk

    def recording_walk(top, *args, **kwargs):
        for folder, subfolders, names in walk(top, *args, **kwargs):
            visited.append(Path(folder).relative_to(tmp_path).as_posix())
            yield folder, subfolders, names

    monkeypatch.setattr(sources.os, "walk", recording_walk)
    source = PythonStdlibSource()
    source.root = tmp_path
    assert sorted(p.as_posix() for p in source._files) == [
        "contest.py", "email/mime/text.py", "json/__init__.py", "json/decoder.py", "os.py"]
    # The walk never went into the installed packages (where torch and friends make it slow).
    assert not [f for f in visited if f.startswith(("site-packages", "dist-packages", "test", "json/tests", "idlelib"))]
    with_tests = PythonStdlibSource(include_tests=True)
    with_tests.root = tmp_path
    assert {p.as_posix() for p in with_tests._files} >= {"test/test_os.py", "json/tests/t.py", "test_support.py",
                                                         "idlelib/run.py", "unittest/test_case/a.py"}
    assert not any("packages" in p.as_posix() for p in with_tests._files)


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
