"""The Mixture-of-Experts feed-forward sublayer: router, stacked experts, dispatch, shared experts.

Shape legend: ``B`` batch, ``S`` sequence, ``T = B·S`` tokens, ``D`` width, ``E`` routed experts.

::

    x (B, S, D) ──► flatten ──► x_TD ──► router ──► RouterOutput (choices, weights, load)
                                  │                         │
                                  ├──► dispatch(x_TD, routing, experts) ───(+)──► y (B, S, D)
                                  └──► shared experts (every token) ────────┘
"""

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from constellation_kit.errors import ConfigError
from constellation_kit.model.dispatch import Dispatcher, GroupedMMDispatch
from constellation_kit.model.experts import SwiGLUExperts
from constellation_kit.model.feedforward import SwiGLU
from constellation_kit.model.router import RouterOutput, TopKRouter

_ROUTER_FIELDS = tuple(field.name for field in dataclasses.fields(RouterOutput))  # dynamo cannot call fields()

RouterFactory = Callable[[int, int], nn.Module]
"""Builds a router from ``(d_model, num_experts)``; its forward maps (T, D) to a :class:`RouterOutput`."""


class MoEFeedForward(nn.Module):
    """A sparsely-activated SwiGLU feed-forward: (B, S, D) -> ((B, S, D), :class:`RouterOutput`).

    Each token runs through the ``K`` routed experts its router picks, weighted by the router's
    combine weights, plus ``num_shared_experts`` experts that see every token (DeepSeekMoE, Dai et al.
    2024: shared experts hold common knowledge so the routed ones can specialise). The shared
    experts are one dense SwiGLU of width ``num_shared_experts · shared_hidden_dim``, which is the
    same function as that many separate experts summed, in one matmul.

    The second return value goes back to the caller through ``TransformerOutput.aux``; the balance
    pieces (:mod:`constellation_kit.model.balance`) and telemetry read it.

    Called by the transformer as ``moe(d_model)``, the same signature as a dense feed-forward.

    Args:
        d_model: model width, supplied by the transformer.
        num_experts: routed experts ``E``.
        expert_hidden_dim: each routed expert's inner width ``H``; a dense SwiGLU of width
            ``K · H`` has the same active FLOPs per token.
        router: factory for the router, called as ``router(d_model, num_experts)``; it owns ``top_k``.
        dispatch: how tokens reach their experts; default :class:`GroupedMMDispatch`, dropless.
        num_shared_experts: experts every token passes through (0 for none).
        shared_hidden_dim: inner width of each shared expert (default ``expert_hidden_dim``).
        init_std: standard deviation of the experts' normal initialisation.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_experts: int = 8,
        expert_hidden_dim: int = 256,
        router: RouterFactory = TopKRouter,
        dispatch: Dispatcher | None = None,
        num_shared_experts: int = 0,
        shared_hidden_dim: int | None = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if num_shared_experts < 0:
            raise ConfigError(f"num_shared_experts={num_shared_experts} must be 0 or more")
        self.router = router(d_model, num_experts)
        self.experts = SwiGLUExperts(d_model, num_experts, expert_hidden_dim, init_std=init_std)
        self.dispatch = dispatch if dispatch is not None else GroupedMMDispatch()
        shared_width = num_shared_experts * (shared_hidden_dim or expert_hidden_dim)
        self.shared_experts = (
            SwiGLU(d_model, hidden_dim=shared_width, init_std=init_std) if num_shared_experts else None
        )

    def active_parameters(self) -> int:
        """Parameters one token passes through: router, shared experts, and k of the E routed experts.

        Used by FLOP counting (``constellation_kit.model.flops``): a token's compute scales with
        these, not with the total.
        """
        routed = sum(p.numel() for p in self.experts.parameters())
        others = sum(p.numel() for p in self.parameters()) - routed
        return others + routed * self.router.top_k // self.router.num_experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        x_TD = x.reshape(-1, x.shape[-1])  # (T, D)
        routing = self.router(x_TD)
        y_TD, dropped_fraction = self.dispatch(x_TD, routing, self.experts)
        # A new value through the positional constructor, not an attribute write, dataclasses.replace
        # or keywords: inside a checkpointed block compiled as one graph, dynamo (torch 2.11) loses
        # tensors set any other way on an object the block created (see TopKRouter.forward).
        routing = RouterOutput(*(
            dropped_fraction if name == "dropped_fraction" else getattr(routing, name) for name in _ROUTER_FIELDS
        ))
        if self.shared_experts is not None:
            y_TD = y_TD + self.shared_experts(x_TD)
        return y_TD.view_as(x), routing
