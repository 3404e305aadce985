"""Token-choice top-k routing for Mixture-of-Experts layers.

Shape legend (torchtitan's convention, ``models/common/moe.py``): ``T`` tokens (batch × sequence,
flattened), ``D`` model width, ``E`` routed experts, ``K`` experts chosen per token. A tensor's
name ends in its shape, so ``weights_TK`` is (T, K).

The router computes everything the balance pieces need and returns it as a value
(:class:`RouterOutput`): nothing is stored on the module between calls, so the same layer can be
called twice (activation checkpointing recomputes it) without double counting.
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from constellation_kit.errors import ConfigError


@dataclass
class RouterOutput:
    """One MoE layer's routing decision and the statistics the balance pieces and telemetry read.

    All routing math is fp32 whatever the autocast (Switch Transformer §2.4: bf16 router logits make
    the softmax unstable).
    """

    logits_TE: torch.Tensor
    """Router logits, fp32, with gradient (the z-loss reads them)."""
    scores_TE: torch.Tensor
    """Softmax or sigmoid of the logits, fp32, with gradient (the Switch loss reads them)."""
    weights_TK: torch.Tensor
    """Combine weights of the chosen experts, fp32, after optional renormalisation and route scale."""
    experts_TK: torch.Tensor
    """Chosen expert of each token copy, int64."""
    tokens_per_expert_E: torch.Tensor
    """Token copies routed to each expert (int64, no gradient): the load, before any capacity drop."""
    router_weight: torch.Tensor
    """A copy of the (E, D) router matrix, with gradient, so a weight penalty needs no handle on the module."""
    dropped_fraction: torch.Tensor | None = None
    """Fraction of token copies dropped by a capacity limit; set by the dispatcher (0 when dropless)."""

    @property
    def num_experts(self) -> int:
        return self.logits_TE.shape[-1]


class TopKRouter(nn.Module):
    """Token-choice top-k router: (T, D) tokens -> :class:`RouterOutput` with (T, K) choices.

    ``scores = softmax(x W^T)`` (Shazeer et al. 2017, Mixtral) or ``sigmoid(x W^T)`` (DeepSeek-V3).
    The ``K`` experts with the highest ``scores + expert_bias`` are chosen; the combine weights are
    the chosen *scores* (the bias only steers the choice: DeepSeek-V3 §2.1.2, eq. 16), optionally
    renormalised to sum to one per token, then multiplied by ``route_scale``.

    ``expert_bias`` (E,) is a persistent buffer (saved in checkpoints, never given gradients). It is
    zero, and so changes nothing, unless a balancer such as
    :class:`constellation_kit.callbacks.AuxLossFreeBalancer` updates it.

    Args:
        d_model: model width, supplied by the MoE layer.
        num_experts: number of routed experts, supplied by the MoE layer.
        top_k: experts chosen per token.
        score: ``"softmax"`` or ``"sigmoid"``.
        renormalize: rescale the K chosen weights to sum to 1 (Mixtral does; Switch with K = 1 does not).
        route_scale: constant factor on the combine weights (DeepSeek-V3 uses 2.5 with sigmoid scores).
        init_std: standard deviation of the router matrix's normal initialisation.
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        *,
        top_k: int = 2,
        score: Literal["softmax", "sigmoid"] = "softmax",
        renormalize: bool = True,
        route_scale: float = 1.0,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ConfigError(f"router top_k={top_k} must be between 1 and num_experts={num_experts}")
        if score not in ("softmax", "sigmoid"):
            raise ConfigError(f"router score={score!r}: choose 'softmax' or 'sigmoid'")
        self.num_experts = num_experts
        self.top_k = top_k
        self.score = score
        self.renormalize = renormalize
        self.route_scale = route_scale
        self.init_std = init_std
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))  # (E, D)
        self.register_buffer("expert_bias", torch.zeros(num_experts), persistent=True)  # (E,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)
        self.expert_bias.zero_()

    def forward(self, x_TD: torch.Tensor) -> RouterOutput:
        # fp32 routing whatever the autocast: the softmax over experts and the top-k ties are
        # sensitive to bf16 rounding (Switch Transformer §2.4, "selective precision").
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            logits_TE = F.linear(x_TD.float(), self.weight.float())
            if self.score == "softmax":
                scores_TE = logits_TE.softmax(dim=-1)
            else:
                scores_TE = logits_TE.sigmoid()
            # The bias takes part in the choice only, and carries no gradient.
            _, experts_TK = torch.topk(scores_TE.detach() + self.expert_bias.float(), self.top_k, dim=-1)
            weights_TK = scores_TE.gather(-1, experts_TK)
            if self.renormalize:
                weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True).clamp_min(1e-20)
            weights_TK = weights_TK * self.route_scale
        # A scatter-add rather than bincount: bincount's output length depends on the data (it grows
        # past minlength with the largest id), so torch.compile cannot trace it; this is always (E,).
        experts_N = experts_TK.flatten()
        tokens_per_expert_E = experts_N.new_zeros(self.num_experts).scatter_add_(0, experts_N, torch.ones_like(experts_N))
        # Positional, in field order: built with keywords inside a checkpointed block compiled as one
        # graph, dynamo (torch 2.11) drops the fields from the block's outputs ("Node output
        # referenced nonexistent value"); positional construction is traced correctly.
        return RouterOutput(
            logits_TE,
            scores_TE,
            weights_TK,
            experts_TK,
            tokens_per_expert_E,
            # A copy: a sharding wrapper (FSDP2) frees the gathered weight once this block's forward
            # ends, and a penalty computed from it after that would read freed memory. (E x D: small.)
            self.weight.clone(),
        )
