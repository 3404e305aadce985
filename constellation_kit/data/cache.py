"""The on-disk cache for trained tokenizers, tokenised corpora, generated media and media scans.

Every entry is written atomically (:func:`write_atomically`), and built by one process at a time
(:func:`exclusive`): under torchrun or srun every rank starts at once, asks for the same tokenizer
before any process group exists, and without the lock each would train its own copy.
"""

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; each process builds for itself, still atomically written
    fcntl = None

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$CONSTELLATION_KIT_CACHE``, else ``$XDG_CACHE_HOME/constellation-kit``, else ``~/.cache/constellation-kit``."""
    if env := os.environ.get("CONSTELLATION_KIT_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "constellation-kit"


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, then rename the result onto ``path``.

    A reader (another rank, a later run) sees either no file or a complete one, never a torn
    write: ``os.replace`` is atomic within one file system, and the temporary file sits beside
    the target so it is on the same one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def exclusive(lock: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``lock`` for the block: other processes wait for it.

    Callers check for their cache entry, take the lock, and check again: the first process builds
    ``what``, the rest find it built. The lock is the kernel's, so a process that dies holding it
    releases it (no stale lock files to clean). It covers every process that sees the same cache
    directory: the ranks of a node, and the nodes of a shared file system that supports ``flock``
    (NFSv4, Lustre with ``-o flock``); elsewhere each node builds its own copy, atomically.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as handle:
        if fcntl is None:
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to prepare %s (lock %s)", what, lock)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
