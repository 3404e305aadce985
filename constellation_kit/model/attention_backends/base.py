"""The interface every attention kernel implements."""

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from constellation_kit.model.layout import SequenceLayout


class AttentionBackend(ABC):
    """Causal, document-masked, optionally sliding-window attention over packed sequences.

    ``q`` (B, H, T, hd), ``k`` and ``v`` (B, Hkv, T, hd) with ``H % Hkv == 0`` (grouped-query heads:
    query head h reads key/value head ``h // (H // Hkv)``); returns (B, H, T, hd).

    Query i attends key j exactly when ``j <= i``, both lie in the same document of ``layout``, and,
    when ``window`` is given, ``i - j < window`` (a window of W tokens, the query's own included;
    flash-attn's ``window_size=(W - 1, 0)``). Scores are scaled by ``1 / sqrt(hd)``.
    """

    name: str

    @abstractmethod
    def unavailable_reason(self, q: torch.Tensor, dropout_p: float) -> str | None:
        """``None`` when this backend can run ``q`` (device, dtype, head size), else why not."""

    @abstractmethod
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: SequenceLayout,
        window: int | None,
        dropout_p: float,
    ) -> torch.Tensor:
        """Attend; see the class docstring for shapes and the mask."""

    def attend_cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """New queries (B, H, T, hd) against cached keys and values (B, Hkv, S, hd) under ``allowed`` (B, 1, T, S).

        The decoding step of :class:`~constellation_kit.model.kv_cache.KVCache`: T is a handful of new
        tokens and S the cache, so an explicit (T, S) mask is linear in the cache, and the training
        kernels' (T, T) layouts do not apply. This default is SDPA with that mask (any device and
        dtype); a backend with a faster decoding kernel overrides it. Every query row allows at
        least its own key, so no softmax row is empty.
        """
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
