"""Handing documents from one curation stage to the next: one gzipped JSONL file per task."""

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter


def task_file(rank: int) -> str:
    return f"{rank:05d}.jsonl.gz"


def write_task_files(folder: str) -> JsonlWriter:
    """datatrove's JSONL writer, one file per task (``00003.jsonl.gz`` for task 3); it passes documents on."""
    return JsonlWriter(folder, output_filename="${rank}.jsonl.gz", compression="gzip")


class TaskFileReader(JsonlReader):
    """Read back exactly the file task ``rank`` wrote in an earlier stage, in the order it was written.

    datatrove's dedup stages address documents by their position in a task's stream, so task ``r``
    must see again what task ``r`` saw; the stock reader's sharding of a folder's file list would
    shift every file by one as soon as a task wrote nothing.
    """

    name = "task files"

    def __init__(self, folder: str) -> None:
        super().__init__(folder, compression="gzip", add_file_path=False)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.data_folder.isfile(task_file(rank)):
            for document in self.read_file(task_file(rank)):
                self.update_doc_stats(document)
                yield document
