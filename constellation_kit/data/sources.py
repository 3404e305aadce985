"""Where documents come from. A source yields documents in a stable order, with stable ids."""

import hashlib
import sys
import sysconfig
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True)
class Document:
    """One unit of text that packing keeps together and attention never crosses.

    ``id`` is stable across runs and machines with the same source; splits hash it.
    """

    id: str
    text: str


class DocumentSource(ABC):
    """A corpus: an ordered, repeatable stream of :class:`Document`."""

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
        for path in self.root.rglob("*.py"):
            relative = path.relative_to(self.root)
            parts = relative.parts
            if "site-packages" in parts or "dist-packages" in parts:
                continue
            if not self.include_tests and any(p in ("test", "tests", "idlelib") or p.startswith("test_") for p in parts):
                continue
            files.append(relative)
        files.sort(key=lambda p: hashlib.sha1(p.as_posix().encode()).hexdigest())
        return files[: self.max_documents] if self.max_documents is not None else files

    def documents(self) -> Iterator[Document]:
        for relative in self._files:
            raw = (self.root / relative).read_bytes()[: self.max_bytes_per_document]
            yield Document(id=relative.as_posix(), text=raw.decode("utf-8", errors="replace"))

    def fingerprint(self) -> str:
        listing = "\n".join(f"{p.as_posix()}:{(self.root / p).stat().st_size}" for p in self._files)
        key = f"stdlib-{sys.version_info[:3]}-{self.max_bytes_per_document}\n{listing}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]
