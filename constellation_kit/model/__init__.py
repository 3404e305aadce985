"""Single-device model code: plain PyTorch, no Lightning, no torch.distributed.

Each piece is a small module with a typed constructor, so a recipe can name any implementation by
``class_path``. Parallelism (FSDP2, activation checkpointing, compile) is applied elsewhere.
"""

from constellation_kit.model.attention import GroupedQueryAttention
from constellation_kit.model.balance import BalanceLoss, RouterL2Penalty, RouterZLoss, SwitchBalanceLoss
from constellation_kit.model.dispatch import Dispatcher, GroupedMMDispatch, LoopDispatch
from constellation_kit.model.experts import SwiGLUExperts
from constellation_kit.model.feedforward import SwiGLU
from constellation_kit.model.layout import SequenceLayout
from constellation_kit.model.moe import MoEFeedForward
from constellation_kit.model.rope import RotaryEmbedding
from constellation_kit.model.router import RouterOutput, TopKRouter
from constellation_kit.model.transformer import Block, Transformer, TransformerOutput

__all__ = [
    "BalanceLoss",
    "Block",
    "Dispatcher",
    "GroupedMMDispatch",
    "GroupedQueryAttention",
    "LoopDispatch",
    "MoEFeedForward",
    "RotaryEmbedding",
    "RouterL2Penalty",
    "RouterOutput",
    "RouterZLoss",
    "SequenceLayout",
    "SwiGLU",
    "SwiGLUExperts",
    "SwitchBalanceLoss",
    "TopKRouter",
    "Transformer",
    "TransformerOutput",
]
