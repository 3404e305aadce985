"""KeepFreedMemory: after the first step, a CPU training step's large buffers no longer fault in page by page.

The allocator policy is process-wide and cannot be undone, so each case runs in its own interpreter.
"""

import ast
import statistics
import subprocess
import sys
import textwrap

import pytest
from lightning.pytorch import Trainer

from constellation_kit.callbacks import KeepFreedMemory
from constellation_kit.train import cpu_memory

PAGE_FAULTS_PER_ROUND = textwrap.dedent("""
    import resource, sys, torch
    from constellation_kit.train.cpu_memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    counts = []
    for _ in range(20):  # a step's pattern: two 64 MiB buffers allocated, filled, freed
        before = faults()
        x = torch.ones(16 << 20)
        y = x + 1
        del x, y
        counts.append(faults() - before)
    print(counts)
""")


def page_faults_per_round(policy: str) -> list[int]:
    command = [sys.executable, "-c", PAGE_FAULTS_PER_ROUND, policy]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return ast.literal_eval(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_without_page_faults_once_kept() -> None:
    pages = 2 * (64 << 20) // 4096  # both buffers, in 4 KiB pages
    # glibc's default maps every 64 MiB buffer fresh and unmaps it on free: each round faults both in again.
    assert all(count >= 0.9 * pages for count in page_faults_per_round("default"))
    # Kept: the heap grows in the first round and most later rounds reuse its pages. Now and then one
    # still grows it (small allocations that land between the big buffers split its free space).
    kept = page_faults_per_round("keep")
    assert kept[0] >= 0.4 * pages, kept
    assert statistics.median(kept[1:]) < 100 and sum(kept[1:]) < 0.2 * pages * len(kept[1:]), kept


def test_the_callback_applies_the_policy_on_a_cpu_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    KeepFreedMemory().setup(trainer, None, "fit")
    assert calls == [1]
