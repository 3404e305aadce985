"""Linear warmup, then cosine decay to a floor: the learning-rate schedule of the paper."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from constellation_kit.errors import ConfigError


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """The multiplier on the peak LR at optimizer step ``step`` (0-based), in closed form.

    - warmup, ``step < W``: ``(step + 1) / W``, so the first step already moves and step ``W - 1``
      runs at the peak;
    - decay, ``W <= step``: ``r + (1 - r) · ½ (1 + cos(π · p))`` with ``p = (step - W) / (S - 1 - W)``,
      so step ``W`` runs at the peak and the last step ``S - 1`` exactly at ``r · peak``;
    - past the end (``step >= S``), it stays at ``r``.

    ``W`` = ``warmup_steps``, ``S`` = ``total_steps``, ``r`` = ``min_lr_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule(LambdaLR):
    """Scales each param group's LR (its peak) by :func:`warmup_cosine_factor`, stepped per optimizer step.

    Args:
        optimizer: the optimizer whose groups' ``lr`` are the peaks.
        total_steps: optimizer steps in the whole run (the trainer's ``estimated_stepping_batches``).
        warmup_fraction: share of ``total_steps`` spent warming up (the paper: 0.05).
        min_lr_ratio: the final LR as a fraction of the peak.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.1,
    ) -> None:
        if total_steps < 1:
            raise ConfigError(f"the schedule needs total_steps >= 1, got {total_steps}: set trainer.max_steps")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction={warmup_fraction} must be in [0, 1)")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio={min_lr_ratio} must be in [0, 1]")
        self.total_steps = total_steps
        self.warmup_steps = round(warmup_fraction * total_steps)
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, self.factor)

    def state_dict(self) -> dict:
        # Only the position (last_epoch) and base LRs are state; the plan (total and warmup steps,
        # floor) comes from the config, so a resumed run follows the recipe it was resumed with.
        state = super().state_dict()
        for key in ("total_steps", "warmup_steps", "min_lr_ratio"):
            state.pop(key, None)
        return state

    def factor(self, step: int) -> float:
        return warmup_cosine_factor(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)
