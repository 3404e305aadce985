"""The first curation step: raw files in, :class:`datatrove.data.Document` out, bad input skipped and counted.

datatrove's own readers are not used for this step because they are silent about bad input, which
issue 11 forbids: ``JsonlReader`` logs and drops a whole file at its first invalid UTF-8 byte and
drops a line that is not JSON with only a warning; every reader drops a record without text
uncounted. This reader counts each skipped record by reason in the step's datatrove stats
(``skipped_<reason>``), which the report sums over tasks.
"""

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from constellation_kit.data.curation.inputs import file_format
from constellation_kit.data.curation.junk import decode_utf8, text_skip_reason
from constellation_kit.data.manifest import MODALITIES

SKIP_PREFIX = "skipped_"
"""Stats named ``skipped_<reason>`` (here and in :class:`MediaCheck`) are the report's ``skipped``."""


class CurationReader(PipelineStep):
    """Read this task's share of ``files``: task ``r`` of ``n`` reads ``files[r::n]``.

    - plain text files: one document per file;
    - JSONL (``.jsonl``, ``.jsonl.gz``, ``.ndjson``, ``.json``): one document per line, the text under
      the first of ``text_keys`` present; a line naming ``"image"`` or ``"audio"`` is a media row (the
      path relative to the file's folder, as in the kit's manifests), its text is the caption;
    - Parquet: one document per row, the same keys as JSONL.

    Skip reasons: ``invalid_utf8``, ``truncated_json`` (a line that opens an object and never closes
    it), ``invalid_json``, ``no_text`` (no string under any text key), ``empty``, ``binary``,
    ``bad_media_path`` (a media value that is not a path string, or both image and audio),
    ``unreadable_file`` (a file that cannot be opened or decompressed; counted once per file).

    Each document's ``metadata`` holds ``source`` (the file) and, for media rows, ``image`` or
    ``audio`` (an absolute path).
    """

    name = "read"
    type = "📖 - READER"

    def __init__(self, files: list[str], text_keys: tuple[str, ...] = ("text", "caption")) -> None:
        super().__init__()
        self.files = list(files)
        self.text_keys = tuple(text_keys)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for path in self.files[rank::world_size]:
            self.stat_update("input_files")
            yield from self._read_file(path)

    def skip(self, reason: str) -> None:
        self.stat_update(SKIP_PREFIX + reason, "documents_in")

    def _read_file(self, path: str) -> Iterator[Document]:
        kind = file_format(path)
        if kind == "parquet":
            yield from self._read_parquet(path)
        elif kind == "jsonl":
            yield from self._read_jsonl(path)
        else:
            try:
                raw = Path(path).read_bytes()
            except OSError:
                self.skip("unreadable_file")
                return
            text = decode_utf8(raw)
            if text is None:
                self.skip("invalid_utf8")
                return
            document = self._document(text, path, path, {})
            if document is not None:
                yield document

    def _read_jsonl(self, path: str) -> Iterator[Document]:
        opener = gzip.open if path.lower().endswith(".gz") else open
        try:
            with opener(path, "rb") as lines:
                # Streamed line by line: a JSONL file may be far larger than memory.
                for number, line in enumerate(lines, start=1):
                    document = self._line(line, f"{path}:{number}", path)
                    if document is not None:
                        yield document
        except (OSError, EOFError):  # missing, unreadable, or a gzip stream corrupt or cut short
            self.skip("unreadable_file")

    def _line(self, line: bytes, doc_id: str, path: str) -> Document | None:
        if not line.strip():
            return None  # a blank line is no record
        text = decode_utf8(line)
        if text is None:
            self.skip("invalid_utf8")
            return None
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            stripped = text.strip()
            self.skip("truncated_json" if stripped.startswith("{") and not stripped.endswith("}") else "invalid_json")
            return None
        return self._record(record, doc_id, path)

    def _read_parquet(self, path: str) -> Iterator[Document]:
        import pyarrow
        import pyarrow.parquet as pq

        row = 0
        try:
            # Batch by batch: a Parquet file may be far larger than memory. A file corrupt half-way
            # keeps the rows read before the damage and counts one unreadable_file.
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for record in batch.to_pylist():
                    row += 1
                    document = self._record(record, f"{path}:{row}", path)
                    if document is not None:
                        yield document
        except (OSError, pyarrow.ArrowException):
            self.skip("unreadable_file")

    def _record(self, record: object, doc_id: str, path: str) -> Document | None:
        if not isinstance(record, dict):
            self.skip("no_text")
            return None
        text = next((record[k] for k in self.text_keys if isinstance(record.get(k), str)), None)
        if text is None:
            self.skip("no_text")
            return None
        media = [m for m in MODALITIES if record.get(m) is not None]
        metadata = {}
        if media:
            written = record[media[0]]
            if len(media) > 1 or not isinstance(written, str) or not written:
                self.skip("bad_media_path")
                return None
            metadata[media[0]] = str((Path(path).parent / written).resolve())
        return self._document(text, doc_id, path, metadata)

    def _document(self, text: str, doc_id: str, path: str, metadata: dict) -> Document | None:
        reason = text_skip_reason(text)
        if reason is not None:
            self.skip(reason)
            return None
        self.stat_update("documents_in")
        return Document(text=text, id=doc_id, metadata={"source": path, **metadata})
