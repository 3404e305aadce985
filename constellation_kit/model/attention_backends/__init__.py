"""Attention kernels behind one interface, chosen by name or automatically.

Every backend computes the same function (see :class:`AttentionBackend`); they differ in which
devices and dtypes they run on and how fast. ``auto`` picks, per device and dtype, the first
available of flash-attn 2 -> FlexAttention -> SDPA, and logs the choice once.
"""

import logging
from functools import lru_cache
from typing import Literal

import torch

from constellation_kit.errors import ConfigError
from constellation_kit.model.attention_backends.base import AttentionBackend
from constellation_kit.model.attention_backends.eager import EagerBackend
from constellation_kit.model.attention_backends.flash import FlashAttnBackend
from constellation_kit.model.attention_backends.flex import FlexBackend
from constellation_kit.model.attention_backends.sdpa import SDPABackend

log = logging.getLogger(__name__)

BackendName = Literal["auto", "flash_attn", "sdpa", "flex", "eager"]

BACKENDS: dict[str, AttentionBackend] = {
    "flash_attn": FlashAttnBackend(),
    "flex": FlexBackend(),
    "sdpa": SDPABackend(),
    "eager": EagerBackend(),
}
AUTO_ORDER = ("flash_attn", "flex", "sdpa")
"""Fastest first. SDPA runs everywhere, so ``auto`` always finds one."""


def select_backend(name: BackendName, q: torch.Tensor, dropout_p: float) -> AttentionBackend:
    """The backend to run ``q`` (its device and dtype) with, by name or ``auto``.

    Raises :class:`ConfigError` when a named backend cannot run here, with the reason.
    """
    if name != "auto":
        backend = BACKENDS[name]
        reason = backend.unavailable_reason(q, dropout_p)
        if reason is not None:
            raise ConfigError(f"attention backend {name!r} cannot run here: {reason}. Use backend: auto or sdpa")
        return backend
    reasons = []
    for candidate in AUTO_ORDER:
        reason = BACKENDS[candidate].unavailable_reason(q, dropout_p)
        if reason is None:
            if not torch.compiler.is_compiling():  # lru_cache is opaque to dynamo; eager calls log it
                _log_choice(candidate, q.device.type, str(q.dtype), "; ".join(reasons))
            return BACKENDS[candidate]
        reasons.append(f"{candidate}: {reason}")
    raise AssertionError("SDPA is always available")  # pragma: no cover


@lru_cache(maxsize=None)
def _log_choice(name: str, device: str, dtype: str, skipped: str) -> None:
    # Once per (choice, device, dtype), not once per layer and step.
    log.info("attention backend auto -> %s on %s %s%s", name, device, dtype, f" (skipped {skipped})" if skipped else "")


__all__ = ["AUTO_ORDER", "BACKENDS", "AttentionBackend", "BackendName", "select_backend"]
