"""The decoder-only transformer, assembled from injected component factories.

Every sublayer is built by a factory the recipe names by ``class_path`` (jsonargparse turns a
``Callable[[int, ...], nn.Module]`` with ``init_args`` into a partial that takes the remaining
positional arguments here). Injecting factories rather than built modules is what lets the
LightningModule construct the whole network inside ``configure_model``, on the meta device when
the model is too large for one device, and lets a parallelize step wrap each block.

One block, pre-norm (GPT-2 / Llama)::

    x ──► norm ──► attention ──► dropout ──(+)──► norm ──► feed-forward ──► dropout ──(+)──►
    │                                      ▲  │                                        ▲
    └──────────────────────────────────────┘  └────────────────────────────────────────┘

A sublayer may return ``(y, aux)`` instead of ``y``: the aux value (for example a router's
statistics) is passed back to the caller in :attr:`TransformerOutput.aux`, never kept as state.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from constellation_kit.errors import ConfigError
from constellation_kit.model.attention import GroupedQueryAttention
from constellation_kit.model.feedforward import SwiGLU
from constellation_kit.model.kv_cache import KVCache
from constellation_kit.model.layers import Embedding, Linear
from constellation_kit.model.layout import SequenceLayout

AttentionFactory = Callable[[int, int], nn.Module]
"""Builds a self-attention sublayer from ``(d_model, layer_index)``."""
FeedForwardFactory = Callable[[int], nn.Module]
"""Builds a feed-forward sublayer from ``d_model``."""
NormFactory = Callable[[int], nn.Module]
"""Builds a normalisation layer from ``d_model``."""


@dataclass
class TransformerOutput:
    """What one forward pass returns.

    ``hidden`` (B, T, d_model): the final-normed hidden states; :meth:`Transformer.logits` maps them
    to the vocabulary (kept separate so a loss can avoid materialising all logits at once).
    ``aux``: one entry per sublayer that returned ``(y, aux)``, as ``(layer_index, aux)``.
    """

    hidden: torch.Tensor
    aux: list[tuple[int, Any]] = field(default_factory=list)


class Block(nn.Module):
    """One pre-norm transformer block: (B, T, d_model) -> (B, T, d_model)."""

    def __init__(
        self,
        d_model: int,
        layer_index: int,
        attention: AttentionFactory,
        feed_forward: FeedForwardFactory,
        norm: NormFactory,
        dropout: float,
    ) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.attention_norm = norm(d_model)
        self.attention = attention(d_model, layer_index)
        self.feed_forward_norm = norm(d_model)
        self.feed_forward = feed_forward(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, layout: SequenceLayout, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, list[tuple[int, Any]]]:
        """(B, T, d_model) -> the same shape, and the ``(layer_index, aux)`` its sublayers reported.

        The aux entries are returned, not appended to a list the caller passes in: wrappers such as
        FSDP2 rebuild a module's input containers (moving tensors to the device), so appends to an
        argument would land in a copy and be lost. A ``cache`` goes to the attention only, and only
        when given: an attention module of the user's need not know about caches until it is used
        for generation.
        """
        aux: list[tuple[int, Any]] = []
        attention_args = (layout,) if cache is None else (layout, cache)
        x = x + self.dropout(self._collect(self.attention(self.attention_norm(x), *attention_args), aux))
        x = x + self.dropout(self._collect(self.feed_forward(self.feed_forward_norm(x)), aux))
        return x, aux

    def _collect(self, out: torch.Tensor | tuple[torch.Tensor, Any], aux: list[tuple[int, Any]]) -> torch.Tensor:
        if isinstance(out, tuple):
            out, extra = out
            aux.append((self.layer_index, extra))
        return out


class Transformer(nn.Module):
    """Decoder-only transformer: token ids (B, T) -> hidden states (B, T, d_model) -> logits (B, T, V).

    Args:
        vocab_size: tokenizer vocabulary, supplied by the caller (the data decides it).
        d_model: model width.
        n_layers: number of blocks.
        attention: factory for each block's self-attention, called as ``attention(d_model, layer_index)``.
        feed_forward: factory for each block's feed-forward, called as ``feed_forward(d_model)``.
        moe: factory for the feed-forward of the Mixture-of-Experts blocks, called as ``moe(d_model)``
            (e.g. :class:`~constellation_kit.model.MoEFeedForward`); ``None`` makes every block dense.
        moe_every: with ``moe`` set, block ``i`` is MoE when ``(i + 1) % moe_every == 0``: 1 makes
            every block MoE, 2 every other block starting with the second (Switch, GShard).
        norm: factory for every normalisation layer, called as ``norm(d_model)``.
        dropout: residual and embedding dropout.
        tie_embeddings: reuse the token-embedding matrix as the LM head (Press & Wolf 2017).
        pad_vocab_to: round the embedding rows up to a multiple of this, for matmul-friendly
            shapes (nanoGPT: 50257 -> 50304); the extra rows are never targets.
        init_std: standard deviation of the embedding and LM-head initialisation.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        d_model: int = 256,
        n_layers: int = 4,
        attention: AttentionFactory = GroupedQueryAttention,
        feed_forward: FeedForwardFactory = SwiGLU,
        moe: FeedForwardFactory | None = None,
        moe_every: int = 1,
        norm: NormFactory = nn.RMSNorm,
        dropout: float = 0.0,
        tie_embeddings: bool = False,
        pad_vocab_to: int = 64,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if vocab_size < 1 or d_model < 1 or n_layers < 1:
            raise ConfigError(
                f"vocab_size={vocab_size}, d_model={d_model} and n_layers={n_layers} must all be positive"
            )
        if moe_every < 1:
            raise ConfigError(f"moe_every={moe_every} must be at least 1 (1 = every block is MoE)")
        if moe is not None and moe_every > n_layers:
            # Block i is MoE when (i + 1) % moe_every == 0: past the depth, no block would be.
            raise ConfigError(
                f"moe_every={moe_every} is larger than n_layers={n_layers}, so no block would be MoE: "
                f"use a moe_every between 1 and {n_layers}, or set moe: null for a dense model"
            )
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.tie_embeddings = tie_embeddings
        padded_vocab = pad_vocab_to * -(-vocab_size // pad_vocab_to)
        self.token_embedding = Embedding(padded_vocab, d_model, init_std=init_std)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, i, attention, self._feed_forward_of(i, feed_forward, moe, moe_every), norm, dropout)
            for i in range(n_layers)
        )
        self.final_norm = norm(d_model)
        # A tied head is not a module: sharing one Parameter between two modules breaks under
        # to_empty() and FSDP sharding, so the head reads the embedding weight directly instead.
        self.lm_head = None if tie_embeddings else Linear(d_model, padded_vocab, init_std=init_std)

    @staticmethod
    def _feed_forward_of(
        layer_index: int, feed_forward: FeedForwardFactory, moe: FeedForwardFactory | None, moe_every: int
    ) -> FeedForwardFactory:
        """The feed-forward factory of block ``layer_index``: ``moe`` on every ``moe_every``-th block."""
        return moe if moe is not None and (layer_index + 1) % moe_every == 0 else feed_forward

    @torch.no_grad()
    def init_weights(self) -> None:
        """Re-initialise every submodule through its own ``reset_parameters()``.

        Use after materialising a meta-device model (``to_empty``). Every parameter is initialised
        by the module that owns it (see :mod:`constellation_kit.model.layers`), so order is irrelevant.
        """
        for module in self.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> embeddings (B, T, d_model); callers may overwrite positions before :meth:`forward`."""
        return self.token_embedding(tokens)

    def forward(
        self,
        tokens: torch.Tensor | None = None,
        layout: SequenceLayout | None = None,
        embeddings: torch.Tensor | None = None,
        edit_embeddings: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> TransformerOutput:
        """Run the blocks over ``tokens`` (B, T), or over precomputed ``embeddings`` (B, T, d_model).

        ``layout`` describes packed documents; ``None`` means one document per row.
        ``edit_embeddings`` maps the token embeddings (B, T, d_model) to the blocks' input, e.g. to
        write encoder outputs over placeholder tokens. It runs inside this forward on purpose: under
        FSDP2 the embedding table is only gathered while the root module's forward runs.

        ``cache`` (generation): ``tokens`` continue the sequences the cache holds; every attention
        layer attends its cached keys and adds the new ones. ``layout`` is then the one
        :meth:`KVCache.extend` returned for these tokens, or ``None`` when none is padding.
        """
        if embeddings is None:
            if tokens is None:
                raise ValueError("Transformer.forward needs tokens or embeddings")
            embeddings = self.embed(tokens)
        if edit_embeddings is not None:
            embeddings = edit_embeddings(embeddings)
        batch, seq_len, _ = embeddings.shape
        if layout is None:
            layout = (
                SequenceLayout.single_document(batch, seq_len, embeddings.device)
                if cache is None
                else cache.extend(torch.ones(batch, seq_len, dtype=torch.bool, device=embeddings.device))
            )
        x = self.embedding_dropout(embeddings)
        aux: list[tuple[int, Any]] = []
        block_args = (layout,) if cache is None else (layout, cache)
        for block in self.blocks:
            x, block_aux = block(x, *block_args)
            aux.extend(block_aux)
        return TransformerOutput(hidden=self.final_norm(x), aux=aux)

    @property
    def head_weight(self) -> torch.Tensor:
        """The (padded_vocab, d_model) output projection, tied or not."""
        return self.token_embedding.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., d_model) -> logits (..., vocab_size), padding rows dropped."""
        return F.linear(hidden, self.head_weight)[..., : self.vocab_size]
