"""Single-device model code: plain PyTorch, no Lightning, no torch.distributed.

Each piece is a small module with a typed constructor, so a recipe can name any implementation by
``class_path``. Parallelism (FSDP2, activation checkpointing, compile) is applied elsewhere.
"""

from constellation_kit.model.attention import GroupedQueryAttention
from constellation_kit.model.audio_encoder import AudioEncoder
from constellation_kit.model.balance import BalanceLoss, RouterL2Penalty, RouterZLoss, SwitchBalanceLoss
from constellation_kit.model.dispatch import Dispatcher, GroupedMMDispatch, LoopDispatch
from constellation_kit.model.experts import SwiGLUExperts
from constellation_kit.model.feedforward import SwiGLU
from constellation_kit.model.kv_cache import KVCache
from constellation_kit.model.layout import SequenceLayout
from constellation_kit.model.log_mel import LogMelSpectrogram
from constellation_kit.model.moe import MoEFeedForward
from constellation_kit.model.placeholders import write_at_placeholders
from constellation_kit.model.projector import LinearProjector, MLPProjector
from constellation_kit.model.rope import RopeScaling, RotaryEmbedding
from constellation_kit.model.router import RouterOutput, TopKRouter
from constellation_kit.model.transformer import Block, Transformer, TransformerOutput
from constellation_kit.model.vision_encoder import TimmVisionEncoder

__all__ = [
    "AudioEncoder",
    "BalanceLoss",
    "Block",
    "Dispatcher",
    "GroupedMMDispatch",
    "GroupedQueryAttention",
    "KVCache",
    "LinearProjector",
    "LogMelSpectrogram",
    "LoopDispatch",
    "MLPProjector",
    "MoEFeedForward",
    "RopeScaling",
    "RotaryEmbedding",
    "RouterL2Penalty",
    "RouterOutput",
    "RouterZLoss",
    "SequenceLayout",
    "SwiGLU",
    "SwiGLUExperts",
    "SwitchBalanceLoss",
    "TimmVisionEncoder",
    "TopKRouter",
    "Transformer",
    "TransformerOutput",
    "write_at_placeholders",
]
