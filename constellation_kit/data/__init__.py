"""Data: sources, tokenizer, packing, media decoding, and the DataModules. Knows nothing of the model."""

from constellation_kit.data.batching import micro_batch_size
from constellation_kit.data.long_range_tasks import MultiQueryAssociativeRecall, PasskeyRetrieval, SyntheticTask
from constellation_kit.data.manifest import ManifestItem, read_manifest
from constellation_kit.data.media import MediaError, decode_audio, decode_image, image_transform
from constellation_kit.data.multimodal_datamodule import MultimodalDataModule
from constellation_kit.data.packing import IGNORE_INDEX, PackedDataset, PackedSequences, pack_documents
from constellation_kit.data.sampler import ResumableSampler
from constellation_kit.data.shards import ShardItem, ShardSource, write_shards
from constellation_kit.data.sources import Document, DocumentSource, PythonStdlibSource
from constellation_kit.data.streaming_datamodule import StreamingDataModule
from constellation_kit.data.synthetic_datamodule import SyntheticDataModule
from constellation_kit.data.text_datamodule import TextDataModule
from constellation_kit.data.tokenizer import ByteLevelBPE

__all__ = [
    "IGNORE_INDEX",
    "ByteLevelBPE",
    "Document",
    "DocumentSource",
    "ManifestItem",
    "MediaError",
    "MultiQueryAssociativeRecall",
    "MultimodalDataModule",
    "PackedDataset",
    "PackedSequences",
    "PasskeyRetrieval",
    "PythonStdlibSource",
    "ResumableSampler",
    "ShardItem",
    "ShardSource",
    "StreamingDataModule",
    "SyntheticDataModule",
    "SyntheticTask",
    "TextDataModule",
    "decode_audio",
    "decode_image",
    "image_transform",
    "micro_batch_size",
    "pack_documents",
    "read_manifest",
    "write_shards",
]
