"""CPU training's allocator policy: keep freed memory in the process instead of handing it back every step.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a buffer above its mmap
threshold (128 KB, rising with use to at most 32 MB) with a fresh ``mmap`` and unmaps it on free, and
it returns the heap's free top to the OS once that exceeds the trim threshold. A training step
allocates and frees the same large activations and gradients every step, so each step faults the
same memory in again, page by page, zero-filled by the kernel: on the tiny recipe's text model, 8,000-16,000
page faults a step (32-64 MB), about 5% of the step on this 2-core machine (``benchmarks/RESULTS.md``,
issue 15). Serving those buffers from the heap and never trimming it ends that after the first step,
as PyTorch's CUDA caching allocator does on a GPU; jemalloc or tcmalloc preloaded do the same.

The cost: the process keeps its peak heap for good (its resident size does not shrink after a large
step), so this is a policy for a training process, set once.
"""

import ctypes
import ctypes.util
import logging

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
"""Tried in order: 1 GiB (glibc 2.36 here accepts it); glibc's documented ceiling, 32 MiB, if refused."""
TRIM_THRESHOLD = 2**31 - 1
"""``mallopt`` takes a C ``int``: the largest, 2 GiB of free heap top kept. (``1 << 34`` passed as an int
silently becomes 0, which trims on every free: the opposite.)"""


def keep_freed_memory() -> bool:
    """Make glibc serve buffers under the mmap threshold from the heap and keep the heap's freed memory.

    Process-wide and not undone. Returns whether both settings took (``False`` on a C library
    without ``mallopt``, such as macOS's, where nothing changes).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_set = any(mallopt(M_MMAP_THRESHOLD, threshold) == 1 for threshold in MMAP_THRESHOLDS)
    return mmap_set and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


class KeepFreedMemory(Callback):
    """On a CPU accelerator, applies :func:`keep_freed_memory` when the trainer sets up (once a process).

    A no-op on GPUs, where activations come from the device's caching allocator, not ``malloc``.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(trainer.accelerator, CPUAccelerator):
            return
        if keep_freed_memory():
            log.debug("glibc malloc: buffers served from the heap and freed memory kept (no per-step page faults)")
        else:
            log.info("KeepFreedMemory: this C library has no glibc mallopt; the allocator is left as it is")
