"""Data: sources, tokenizer, packing, media decoding, and the DataModules. Knows nothing of the model."""

from constellation_kit.data.batching import micro_batch_size
from constellation_kit.data.manifest import ManifestItem, read_manifest
from constellation_kit.data.media import MediaError, decode_audio, decode_image, image_transform
from constellation_kit.data.multimodal_datamodule import MultimodalDataModule
from constellation_kit.data.packing import IGNORE_INDEX, PackedDataset, PackedSequences, pack_documents
from constellation_kit.data.sampler import ResumableSampler
from constellation_kit.data.sources import Document, DocumentSource, PythonStdlibSource
from constellation_kit.data.text_datamodule import TextDataModule
from constellation_kit.data.tokenizer import ByteLevelBPE

__all__ = [
    "IGNORE_INDEX",
    "ManifestItem",
    "MediaError",
    "MultimodalDataModule",
    "ByteLevelBPE",
    "Document",
    "DocumentSource",
    "PackedDataset",
    "PackedSequences",
    "PythonStdlibSource",
    "ResumableSampler",
    "TextDataModule",
    "decode_audio",
    "decode_image",
    "image_transform",
    "micro_batch_size",
    "pack_documents",
    "read_manifest",
]
