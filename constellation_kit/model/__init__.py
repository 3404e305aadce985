"""Single-device model code: plain PyTorch, no Lightning, no torch.distributed.

Each piece is a small module with a typed constructor, so a recipe can name any implementation by
``class_path``. Parallelism (FSDP2, activation checkpointing, compile) is applied elsewhere.
"""

from constellation_kit.model.attention import GroupedQueryAttention
from constellation_kit.model.feedforward import SwiGLU
from constellation_kit.model.layout import SequenceLayout
from constellation_kit.model.rope import RopeScaling, RotaryEmbedding
from constellation_kit.model.transformer import Block, Transformer, TransformerOutput

__all__ = [
    "Block",
    "GroupedQueryAttention",
    "RopeScaling",
    "RotaryEmbedding",
    "SequenceLayout",
    "SwiGLU",
    "Transformer",
    "TransformerOutput",
]
