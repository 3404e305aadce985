"""The media scan: every media file of a manifest decoded once, the bad ones named by reason, cached.

Every rank (and every later run on the same files) needs the same answer, and decoding millions of
files takes hours: one process decodes under the cache lock and writes the result atomically, keyed
by every file's path, size and mtime, the size cap and the decoders' versions; the others wait and
read it. The multimodal DataModule drops what the scan rejected before packing.
"""

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import PIL
import soundfile

from constellation_kit.data.cache import exclusive, write_atomically
from constellation_kit.data.manifest import ManifestItem
from constellation_kit.data.media import MediaError, decode_audio, decode_image

log = logging.getLogger(__name__)

SCAN_VERSION = 1  # bump when what the scan checks changes: it keys the cached scan results

ScanResult = dict[str, Any]
"""``{"usable": [index, ...], "skipped": {reason: n}, "first": [message, ...]}``."""


def scan_media(items: list[ManifestItem], max_bytes: int | None) -> ScanResult:
    """Decode every item once; the indices of those that decode, the rest counted by reason."""
    decoders = {
        "image": partial(decode_image, max_bytes=max_bytes),
        "audio": partial(decode_audio, max_bytes=max_bytes),
    }
    usable: list[int] = []
    skipped: Counter = Counter()
    first: list[str] = []
    for index, item in enumerate(items):
        try:
            decoders[item.modality](item.path)
        except MediaError as error:
            skipped[error.reason] += 1
            if len(first) < 5:
                first.append(str(error))
            continue
        usable.append(index)
    return {"usable": usable, "skipped": dict(skipped), "first": first}


def scan_cache_path(items: list[ManifestItem], cache_dir: Path, max_bytes: int | None) -> Path:
    """Where the scan of ``items`` is cached: replacing or fixing one file means a fresh scan."""
    digest = hashlib.sha256(f"v{SCAN_VERSION}|{max_bytes}|{PIL.__version__}|{soundfile.__version__}".encode())
    for item in items:
        try:
            stat = Path(item.path).stat()
            digest.update(f"\n{item.path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"\n{item.path}|-".encode())
    return cache_dir / "media-scans" / f"{digest.hexdigest()[:16]}.json"


def cached_scan(
    items: list[ManifestItem], cache_dir: Path, max_bytes: int | None, scan: Callable[[list[ManifestItem]], ScanResult]
) -> ScanResult:
    """``scan(items)``, done once per cache by one process (see the module docstring)."""
    path = scan_cache_path(items, cache_dir, max_bytes)
    if not path.is_file():
        with exclusive(path.with_suffix(".lock"), "the media scan"):
            if not path.is_file():
                log.info("Scanning %d media files (cached at %s)", len(items), path)
                result = scan(items)
                write_atomically(path, lambda tmp: tmp.write_text(json.dumps(result)))
    return json.loads(path.read_text())
