"""The on-disk cache for trained tokenizers and tokenised corpora, written atomically."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
