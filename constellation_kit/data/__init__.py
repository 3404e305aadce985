"""Data: sources, tokenizer, packing, and the DataModules. Knows nothing of the model."""

from constellation_kit.data.batching import micro_batch_size
from constellation_kit.data.packing import IGNORE_INDEX, PackedDataset, PackedSequences, pack_documents
from constellation_kit.data.sampler import ResumableSampler
from constellation_kit.data.sources import Document, DocumentSource, PythonStdlibSource
from constellation_kit.data.synthetic import MultiQueryAssociativeRecall, PasskeyRetrieval, SyntheticTask
from constellation_kit.data.synthetic_datamodule import SyntheticDataModule
from constellation_kit.data.text_datamodule import TextDataModule
from constellation_kit.data.tokenizer import ByteLevelBPE

__all__ = [
    "IGNORE_INDEX",
    "MultiQueryAssociativeRecall",
    "PasskeyRetrieval",
    "SyntheticDataModule",
    "SyntheticTask",
    "ByteLevelBPE",
    "Document",
    "DocumentSource",
    "PackedDataset",
    "PackedSequences",
    "PythonStdlibSource",
    "ResumableSampler",
    "TextDataModule",
    "micro_batch_size",
    "pack_documents",
]
