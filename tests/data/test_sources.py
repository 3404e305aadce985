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

