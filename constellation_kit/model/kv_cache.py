"""The key/value cache that makes generation one token's work per step instead of the whole prefix's.

Without a cache every new token re-runs the network over the prompt and everything generated so
far: O(T²) projections and MLP work for T tokens. With one, each attention layer keeps the keys and
values it has already computed, and a step runs the network over the new tokens only; their queries
attend the cached keys plus their own.

What each layer keeps follows its kind (:mod:`constellation_kit.model.attention`):

- a **global** layer keeps every key: any later query may attend any earlier token;
- a **local** layer of window W keeps only the last ``W - 1``: a later query sees at most W keys,
  its own included, so nothing older can ever be read again. Its memory is constant in the length
  generated (Gemma 3's reason for mostly-local layers; Beltagy et al. 2020).

Keys are stored with the ``n_kv_heads`` of grouped-query attention, not repeated per query head:
the cache is ``n_heads / n_kv_heads`` times smaller than multi-head attention's.

Rows of a batch may hold prompts of different lengths: they are **left-padded** (every row's last
token sits in the last column, so one decoding step appends one column for all rows). Padding is
marked in :meth:`KVCache.extend`; it never becomes a key a real token attends, and positions (for
RoPE) count real tokens only, so a padded row computes what it would alone.

Shape legend: ``B`` rows, ``T`` new tokens this step, ``S`` cached keys, ``Hkv`` key/value heads,
``hd`` head width.
"""

from dataclasses import dataclass

import torch

from constellation_kit.model.attention_backends.base import AttentionBackend
from constellation_kit.model.layout import SequenceLayout


@dataclass
class LayerCache:
    """One attention layer's cached keys and values (B, Hkv, S, hd), and each key's position (B, S).

    A position of -1 marks a padding column: never attended by a real token.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor


class KVCache:
    """Keys and values of every attention layer for B sequences being extended token by token.

    Use::

        cache = KVCache()
        layout = cache.extend(valid)              # (B, T) bool, False for left padding
        out = network(prompt, layout, cache=cache)  # fills the cache
        out = network(next_tokens, cache=cache)   # (B, 1): one column more for every row

    The first call for a layer (the prompt, or "prefill") runs the layer's own attention kernel over
    the layout :meth:`extend` returned (padding is a separate document there), so a long prompt
    costs what it costs in training, flash-attn or SDPA's memory-linear paths included. Later
    calls attend the cache through :meth:`AttentionBackend.attend_cached` with an explicit
    (T, S + T) mask: one row per new token.

    The model package calls :meth:`attend`; callers only :meth:`extend` (or let the network do it).
    """

    def __init__(self) -> None:
        self.layers: dict[int, LayerCache] = {}
        self.lengths: torch.Tensor | None = None
        """(B,) real tokens each row holds so far."""
        self._step_positions: torch.Tensor | None = None  # (B, T) this step's key positions, -1 for padding

    def extend(self, valid: torch.Tensor) -> SequenceLayout:
        """Start a step of T new tokens per row; returns their layout, to pass to the network's forward.

        ``valid`` (B, T) bool: False marks left padding, which may only precede a row's first real
        token (in the first step). Positions continue each row's count of real tokens; padding gets
        position 0 (its output is never read) and document id 0, real tokens document id 1.
        """
        valid = valid.bool()
        counts = valid.long().cumsum(dim=1)  # (B, T) real tokens up to and including each column
        before = torch.zeros_like(counts[:, :1]) if self.lengths is None else self.lengths[:, None]
        positions = (before + counts - 1).clamp(min=0)  # (B, T)
        self._step_positions = torch.where(valid, positions, torch.full_like(positions, -1))
        self.lengths = before[:, 0] + counts[:, -1]
        return SequenceLayout(document_ids=valid.long(), positions=positions)

    def attend(
        self,
        layer_index: int,
        window: int | None,
        backend: AttentionBackend,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: SequenceLayout,
    ) -> torch.Tensor:
        """This step's attention output (B, H, T, hd) for one layer, keys ``k``/``v`` (B, Hkv, T, hd) cached.

        ``q`` and ``k`` are already rotated to their positions (the layout's, from :meth:`extend`).
        """
        if self._step_positions is None:
            raise RuntimeError("KVCache.attend before KVCache.extend: pass the layout extend() returned")
        new_positions = self._step_positions  # (B, T)
        if new_positions.shape != (q.shape[0], q.shape[2]):
            raise RuntimeError(
                f"KVCache.extend was last called for {tuple(new_positions.shape)} tokens, this step has "
                f"{(q.shape[0], q.shape[2])}: call extend for every step and pass the layout it returns"
            )
        cached = self.layers.get(layer_index)
        if cached is None:
            # The prompt: the layer's own kernel, exactly the training computation.
            y = backend(q, k, v, layout, window, 0.0)
            keys, values, positions = k, v, new_positions
        else:
            keys = torch.cat([cached.keys, k], dim=2)  # (B, Hkv, S + T, hd)
            values = torch.cat([cached.values, v], dim=2)
            positions = torch.cat([cached.positions, new_positions], dim=1)  # (B, S + T)
            y = backend.attend_cached(q, keys, values, self.mask(new_positions, positions, window))
        if window is not None:
            # A later query at position p sees keys p - W + 1 .. p: the last W - 1 columns suffice.
            # Rows advance one column per step together, so these columns hold every row's last W - 1.
            keep = window - 1
            start = max(keys.shape[2] - keep, 0)
            keys, values, positions = keys[:, :, start:], values[:, :, start:], positions[:, start:]
        self.layers[layer_index] = LayerCache(keys, values, positions)
        return y

    @staticmethod
    def mask(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int | None) -> torch.Tensor:
        """(B, 1, T, S) bool: True where a query at ``query_positions`` (B, T) may attend a key (B, S).

        The same rule as training's (:class:`AttentionBackend`): a real key at or before the query,
        and within the last ``window`` positions for a local layer. Queries are real tokens here
        (padding only occurs in the first step, which takes the training kernel).
        """
        q = query_positions[:, :, None]  # (B, T, 1)
        k = key_positions[:, None, :]  # (B, 1, S)
        allowed = (k >= 0) & (k <= q)
        if window is not None:
            allowed = allowed & (q - k < window)
        return allowed.unsqueeze(1)

    def cached_tokens(self, layer_index: int) -> int:
        """Key columns layer ``layer_index`` holds now (0 before its first step)."""
        cached = self.layers.get(layer_index)
        return 0 if cached is None else cached.keys.shape[2]
