import math

import pytest
import torch

from constellation_kit.train import WarmupCosineSchedule

PEAK, TOTAL, WARMUP_FRACTION, MIN_RATIO = 1.2e-4, 200, 0.05, 0.1


def lrs_over_run() -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    schedule = WarmupCosineSchedule(optimizer, TOTAL, warmup_fraction=WARMUP_FRACTION, min_lr_ratio=MIN_RATIO)
    lrs = []
    for _ in range(TOTAL):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_lr_matches_the_closed_form_at_start_end_of_warmup_and_last_step() -> None:
    lrs = lrs_over_run()
    warmup = round(WARMUP_FRACTION * TOTAL)  # 10 steps
    assert lrs[0] == pytest.approx(PEAK * 1 / warmup)
    assert lrs[warmup - 1] == pytest.approx(PEAK)  # last warmup step reaches the peak
    assert lrs[warmup] == pytest.approx(PEAK)  # cosine starts at the peak
    mid = warmup + (TOTAL - 1 - warmup) // 2
    progress = (mid - warmup) / (TOTAL - 1 - warmup)
    assert lrs[mid] == pytest.approx(PEAK * (MIN_RATIO + (1 - MIN_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))))
    assert lrs[-1] == pytest.approx(PEAK * MIN_RATIO)


def test_warmup_is_linear_and_decay_monotone() -> None:
    lrs = lrs_over_run()
    assert lrs[:10] == pytest.approx([PEAK * (s + 1) / 10 for s in range(10)])
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
