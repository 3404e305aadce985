"""Where documents come from. A source yields documents in a stable order, with stable ids."""

import codecs
import hashlib
import logging
import os
import sys
import sysconfig
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    """One unit of text that packing keeps together and attention never crosses.

    ``id`` is stable across runs and machines with the same source; splits hash it.
    """

    id: str
    text: str


def decode_utf8(raw: bytes, truncated: bool = False) -> tuple[str, bool]:
    """``raw`` as text, and whether any bytes were not UTF-8 (each replaced by U+FFFD).

    With ``truncated`` (``raw`` was cut at a byte limit) an incomplete character at the very end is
    dropped, not counted: the cut made it, not the file.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        return decoder.decode(raw, final=not truncated), False
    except UnicodeDecodeError:
        text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(raw, final=not truncated)
        return text, True


class DocumentSource(ABC):
    """A corpus: an ordered, repeatable stream of :class:`Document`.

    A source that decodes bytes records the ids of documents that held invalid UTF-8 in
    :attr:`non_utf8_ids` as it yields them; the DataModules log how many there were.
    """

    non_utf8_ids: frozenset[str] = frozenset()
    """Ids of the documents seen so far whose bytes were not all UTF-8 (kept, bad bytes replaced)."""

    @abstractmethod
    def documents(self) -> Iterator[Document]:
        """Yield every document, in the same order on every call."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short string that changes whenever the documents would; caches are keyed on it."""


class PythonStdlibSource(DocumentSource):
    """The running interpreter's standard-library source files, one document per ``.py`` file.

    Every Python installation carries it, so the built-in corpus needs no download: about 11 MB
    of real code and docstrings in 3.11 without the test suites.

    Args:
        max_documents: keep at most this many files, chosen by a hash of their path (a stable,
            package-spread sample rather than the alphabetically first ones). ``None`` keeps all.
        include_tests: also take ``test/`` packages and other test files (about 20 MB more).
        max_bytes_per_document: truncate longer files; a few generated modules are huge.
    """

    def __init__(
        self,
        max_documents: int | None = None,
        include_tests: bool = False,
        max_bytes_per_document: int = 200_000,
    ) -> None:
        self.max_documents = max_documents
        self.include_tests = include_tests
        self.max_bytes_per_document = max_bytes_per_document
        self.root = Path(sysconfig.get_paths()["stdlib"])

    @cached_property
    def _files(self) -> list[Path]:
        """The chosen files, relative to :attr:`root`, in hash order.

        Walked once per instance: :meth:`fingerprint` and :meth:`documents` both need the list,
        and a walk of the standard library takes over a second.
        """
        files = []
        # A pruned walk: the installed packages live inside the standard library's folder
        # (lib/python3.X/site-packages), and walking them before filtering them out took 1.2-1.7 s
        # of every run's start-up where torch, Lightning and MLflow are installed there.
        for folder, subfolders, names in os.walk(self.root):
            subfolders[:] = [d for d in subfolders if self._keeps(d)]  # pruned in place: never entered
            relative_folder = Path(folder).relative_to(self.root)
            files.extend(relative_folder / n for n in names if n.endswith(".py") and self._keeps(n))
        files.sort(key=lambda p: hashlib.sha1(p.as_posix().encode()).hexdigest())
        return files[: self.max_documents] if self.max_documents is not None else files

    def _keeps(self, name: str) -> bool:
        """Whether a folder or file of this name may hold training documents."""
        if name in ("site-packages", "dist-packages"):
            return False
        return self.include_tests or not (name in ("test", "tests", "idlelib") or name.startswith("test_"))

    def documents(self) -> Iterator[Document]:
        """Each file's text; bytes that are not UTF-8 become U+FFFD and the file is counted.

        Such a file is kept, not dropped: a few replaced bytes leave the rest of a source file
        worth training on, and dropping it would move the train/validation split and the
        tokenizer's corpus for every document after it in a cached run.
        """
        bad = set(self.non_utf8_ids)
        for relative in self._files:
            raw = (self.root / relative).read_bytes()
            cut = len(raw) > self.max_bytes_per_document
            text, replaced = decode_utf8(raw[: self.max_bytes_per_document], truncated=cut)
            if replaced and relative.as_posix() not in bad:
                bad.add(relative.as_posix())
                self.non_utf8_ids = frozenset(bad)
                log.warning("%s: bytes that are not UTF-8, replaced by U+FFFD (document kept)", self.root / relative)
            yield Document(id=relative.as_posix(), text=text)

    def fingerprint(self) -> str:
        listing = "\n".join(f"{p.as_posix()}:{(self.root / p).stat().st_size}" for p in self._files)
        key = f"stdlib-{sys.version_info[:3]}-{self.max_bytes_per_document}\n{listing}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]
