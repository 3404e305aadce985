"""The last curation step: tokenise each document and write it into a litdata optimized dataset.

Every datatrove task writes its own chunk files (``chunk-<task>-<n>.bin``) and its own index
(``<task>.index.json``) with litdata's ``BinaryWriter``, in parallel; :func:`merge_shard_indexes`
joins the per-task indexes into ``index.json`` once all tasks are done. Why not ``litdata.optimize``:
it runs its own worker pool over an input list, so it would be a second, non-resumable engine
beside datatrove's; per-task writers keep the shard step resumable per task like every other stage
(a failed task rewrites only its own chunks) and parallel on whatever executor runs the rest.

The item format (the contract with the streaming side): ``{"tokens": int32 (n,), "image": bytes,
"audio": bytes}``; ``tokens`` are one document's ids with no special token added; ``image`` and
``audio`` are the encoded file's bytes, ``b""`` when none. litdata returns bytes as ``memoryview``.
"""

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched
from litdata.streaming.writer import BinaryWriter
from tokenizers import Tokenizer

from constellation_kit.data.curation.media_check import media_of

INDEX = "index.json"


@contextmanager
def _litdata_rank(rank: int):
    """litdata names a writer's chunks after ``DATA_OPTIMIZER_GLOBAL_RANK``, the variable its own
    ``optimize`` workers set; a datatrove task is such a worker."""
    previous = os.environ.get("DATA_OPTIMIZER_GLOBAL_RANK")
    os.environ["DATA_OPTIMIZER_GLOBAL_RANK"] = str(rank)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DATA_OPTIMIZER_GLOBAL_RANK", None)
        else:
            os.environ["DATA_OPTIMIZER_GLOBAL_RANK"] = previous


class ShardWriter(PipelineStep):
    """Tokenise documents (no special tokens) and write ``{"tokens", "image", "audio"}`` items to ``output_dir``.

    Args:
        output_dir: the litdata dataset folder (``DIR/shards``).
        tokenizer_path: a ``tokenizers`` JSON file.
        chunk_bytes: litdata's chunk size; 64 MB chunks stream well from object storage.
        batch_size: documents encoded per ``encode_batch`` call.
    """

    name = "shards"
    type = "💽 - WRITER"

    def __init__(self, output_dir: str, tokenizer_path: str, chunk_bytes: str = "64MB", batch_size: int = 1024) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.tokenizer_path = tokenizer_path
        self.chunk_bytes = chunk_bytes
        self.batch_size = batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        output = Path(self.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        # A task that died half-way left chunks under its own rank: the rerun writes them afresh.
        for stale in [*output.glob(f"chunk-{rank}-*.bin"), output / f"{rank}.{INDEX}"]:
            stale.unlink(missing_ok=True)
        tokenizer = Tokenizer.from_file(self.tokenizer_path)
        with _litdata_rank(rank):
            writer = BinaryWriter(str(output), chunk_bytes=self.chunk_bytes)
            index = 0
            for batch in batched(data, self.batch_size):
                with self.track_time("batch"):
                    encodings = tokenizer.encode_batch_fast([d.text for d in batch], add_special_tokens=False)
                    for document, encoding in zip(batch, encodings):
                        tokens = np.asarray(encoding.ids, dtype=np.int32)
                        media = media_of(document.metadata)
                        item = {"tokens": tokens, "image": b"", "audio": b""}
                        if media is not None:
                            item[media[0]] = Path(media[1]).read_bytes()
                        writer[index] = item
                        index += 1
                        self.stat_update("documents_out")
                        self.stat_update("tokens_out", value=len(tokens))
            writer.done()
        return
        yield  # a generator, as datatrove steps are, though nothing follows the shards


def merge_shard_indexes(output_dir: str | Path, backup: str | Path) -> int:
    """Join the tasks' ``<rank>.index.json`` into ``index.json``; return the number of chunks.

    litdata's merge deletes each task index as it reads it, so a crash mid-merge would lose them:
    they are copied to ``backup`` first, and a rerun merges from the copies.
    """
    output, backup = Path(output_dir), Path(backup)
    backup.mkdir(parents=True, exist_ok=True)
    for task_index in output.glob(f"*.{INDEX}"):
        shutil.copy2(task_index, backup / task_index.name)
    saved = sorted(backup.glob(f"*.{INDEX}"))
    if not saved:
        return 0
    for task_index in saved:
        shutil.copy2(task_index, output / task_index.name)
    # litdata's own merge (config consistency check, schema fusion, natural rank order, atomic write).
    BinaryWriter(str(output), chunk_bytes="64MB")._merge_no_wait()
    return len(json.loads((output / INDEX).read_text())["chunks"])
