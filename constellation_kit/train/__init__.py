"""Training: the LightningModule, optimizer parameter groups and the LR schedule."""

from constellation_kit.train.alignment import InfoNCEAlignment
from constellation_kit.train.module import LanguageModel
from constellation_kit.train.multimodal_module import MultimodalLanguageModel
from constellation_kit.train.param_groups import weight_decay_groups
from constellation_kit.train.strategy import FSDP2Strategy
from constellation_kit.train.schedule import WarmupCosineSchedule, warmup_cosine_factor

__all__ = [
    "FSDP2Strategy",
    "InfoNCEAlignment",
    "LanguageModel",
    "MultimodalLanguageModel",
    "WarmupCosineSchedule",
    "warmup_cosine_factor",
    "weight_decay_groups",
]
