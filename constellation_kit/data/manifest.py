"""JSONL manifests: one training example per line, text alone or paired with an image or audio file."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from constellation_kit.errors import ConfigError

MODALITIES = ("image", "audio")


@dataclass(frozen=True)
class ManifestItem:
    """One manifest line: ``modality`` is ``"text"``, ``"image"`` or ``"audio"``; ``path`` is absolute (or ``None``)."""

    modality: str
    text: str
    path: str | None = None
    name: str | None = None
    """The media path as the manifest wrote it (relative to the manifest)."""

    @property
    def id(self) -> str:
        """Stable id for splitting: the media path as written in the manifest, or the text of a text-only line.

        Not the resolved path: that depends on where the data sits, and the train/validation split
        must not change when a dataset is moved or copied to another machine.
        """
        if self.path is None:
            return self.text
        return self.name if self.name is not None else self.path


def read_manifest(path: str | Path) -> list[ManifestItem]:
    """Parse a JSONL manifest; media paths are resolved relative to the manifest's folder.

    Lines: ``{"text": ...}``, ``{"image": path, "text": ...}``, ``{"audio": path, "text": ...}``.
    Blank lines are skipped. A malformed line (not JSON, no ``"text"`` string, a media path that is
    not a string, bytes that are not UTF-8) is a :class:`ConfigError` naming file and line: a
    broken manifest is a recipe mistake, unlike a broken media file, which is data to skip.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest {str(path)!r} does not exist: point data.init_args.manifest at a JSONL file")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        number = raw.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            f"{path}:{number}: not UTF-8 (byte {error.start} is {raw[error.start]:#04x}): JSON Lines are UTF-8; "
            "re-encode the manifest, e.g. iconv -f latin1 -t utf-8"
        ) from None
    items = []
    resolve = _Resolver(path.parent)
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ConfigError(f"{path}:{number}: every line needs a \"text\" string")
        media = [m for m in MODALITIES if m in record]
        if len(media) > 1:
            raise ConfigError(f"{path}:{number}: one line pairs text with one image or one audio file, not both")
        if media:
            written = record[media[0]]
            if not isinstance(written, str):
                raise ConfigError(
                    f"{path}:{number}: \"{media[0]}\" must be a path string (relative to the manifest), "
                    f"not {json.dumps(written)}"
                )
            items.append(ManifestItem(media[0], record["text"], resolve(written), written))
        else:
            items.append(ManifestItem("text", record["text"]))
    return items


class _Resolver:
    """``str((base / written).resolve())``, resolving each folder once.

    ``Path.resolve`` checks every component of every path: for the 8000 files of the built-in
    manifest, half a second of each run's start-up. A manifest's files share a few folders, so
    those are resolved once and only the file itself (a symlink, maybe) is looked at per line.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.folders: dict[str, str] = {}

    def __call__(self, written: str) -> str:
        folder, name = os.path.split(os.path.join(self.base, written))
        if name in ("", ".", ".."):
            return str(Path(folder, name).resolve())
        if folder not in self.folders:
            self.folders[folder] = str(Path(folder).resolve())
        joined = os.path.join(self.folders[folder], name)
        return str(Path(joined).resolve()) if os.path.islink(joined) else joined
