"""Dispatch: send each token copy to its expert, run the experts, combine the results.

Shape legend: ``T`` tokens, ``D`` width, ``E`` experts, ``K`` experts per token, ``N = T·K``
token copies, ``H`` expert hidden width.

Every implementation shares the bookkeeping in :class:`Dispatcher` (the sort by expert, computed
once per layer, and the capacity limit) and differs only in :meth:`Dispatcher.run_experts`, which
receives the token copies as indices sorted by expert and returns each token's weighted sum::

    experts_TK ──stable sort──► token_N, weights_N, tokens_per_expert_E ──run_experts(x_TD, …)──► y_TD

Dropless by default (MegaBlocks, Gale et al. 2022): every token copy is computed. With a
``capacity_factor`` each expert keeps at most ``ceil(capacity_factor · N / E)`` copies, in token
order (GShard §2.2); the rest contribute zero and their fraction is reported.
"""

import math

import torch

from constellation_kit.errors import ConfigError
from constellation_kit.model.experts import SwiGLUExperts
from constellation_kit.model.router import RouterOutput
from constellation_kit.model.routed_experts import default_kernel, routed_experts


class Dispatcher:
    """Routes (T, D) tokens through stacked experts by a :class:`RouterOutput`; returns (T, D).

    Args:
        capacity_factor: ``None`` (default) is dropless; a number caps each expert at
            ``ceil(capacity_factor · T · K / E)`` token copies and drops the rest.
    """

    def __init__(self, capacity_factor: float | None = None) -> None:
        if capacity_factor is not None and capacity_factor <= 0:
            raise ConfigError(
                f"capacity_factor={capacity_factor} must be positive: each expert keeps at most "
                "ceil(capacity_factor * tokens * top_k / experts) token copies, so 0 or less would drop every "
                "token. Use e.g. 1.25 (GShard), or null for dropless dispatch"
            )
        self.capacity_factor = capacity_factor

    def run_experts(
        self,
        x_TD: torch.Tensor,
        token_N: torch.Tensor,
        weights_N: torch.Tensor,
        tokens_per_expert_E: torch.Tensor,
        experts: SwiGLUExperts,
    ) -> torch.Tensor:
        """``y_TD`` (T, D): ``y_t = Σ_n w_n · expert_{e(n)}(x_t)`` over the copies ``n`` of token ``t``.

        The N copies come sorted by expert, ``tokens_per_expert_E[e]`` of them for expert ``e``:
        copy ``n`` is a row of token ``token_N[n]`` (N,) with combine weight ``weights_N[n]`` (N,).
        """
        raise NotImplementedError

    def __call__(self, x_TD: torch.Tensor, routing: RouterOutput, experts: SwiGLUExperts) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``y_TD`` and the dropped fraction (a scalar tensor, 0 when dropless)."""
        num_tokens, top_k = routing.experts_TK.shape
        num_experts = experts.num_experts
        experts_N = routing.experts_TK.flatten()
        # Stable sort keeps token order inside each expert: that order decides who is dropped.
        order_N = torch.argsort(experts_N, stable=True)
        tokens_per_expert_E = routing.tokens_per_expert_E
        # zeros_like of a routing tensor, not a fresh torch.zeros: inside a checkpointed compiled block,
        # dynamo (torch 2.11) loses a returned constant that no input feeds ("nonexistent value").
        dropped = torch.zeros((), device=x_TD.device)
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * num_tokens * top_k / num_experts)
            starts_E = torch.cumsum(tokens_per_expert_E, 0) - tokens_per_expert_E
            position_N = torch.arange(order_N.numel(), device=x_TD.device) - starts_E[experts_N[order_N]]
            order_N = order_N[position_N < capacity]  # dropped copies simply never run
            kept_E = tokens_per_expert_E.clamp(max=capacity)
            dropped = 1.0 - kept_E.sum().float() / max(experts_N.numel(), 1)
            tokens_per_expert_E = kept_E
        token_N = order_N // top_k  # copy k of token t sits at flat index t·K + k
        weights_N = routing.weights_TK.flatten().index_select(0, order_N)  # backward: index_add, not index_put
        return self.run_experts(x_TD, token_N, weights_N, tokens_per_expert_E, experts), dropped


class LoopDispatch(Dispatcher):
    """Reference: a Python loop over experts, each a plain matmul on its rows (the Mixtral/HF form).

    Slow when there are many small experts (one kernel launch per expert and projection) but
    obviously correct; the tests hold every other implementation to it.
    """

    def run_experts(
        self,
        x_TD: torch.Tensor,
        token_N: torch.Tensor,
        weights_N: torch.Tensor,
        tokens_per_expert_E: torch.Tensor,
        experts: SwiGLUExperts,
    ) -> torch.Tensor:
        counts = tokens_per_expert_E.tolist()
        x_ND = x_TD.index_select(0, token_N)  # (N, D), sorted by expert
        outputs = []
        for expert, (rows, weights) in enumerate(zip(torch.split(x_ND, counts), torch.split(weights_N, counts))):
            if rows.shape[0]:
                outputs.append(experts.expert_forward(rows, expert) * weights.to(rows.dtype).unsqueeze(-1))
        y_ND = torch.cat(outputs) if outputs else x_ND.new_zeros(0, x_TD.shape[-1])
        return x_TD.new_zeros(x_TD.shape[0], y_ND.shape[-1]).index_add(0, token_N, y_ND)


class GroupedMMDispatch(Dispatcher):
    """The fast path: all routed experts in one operator, :func:`~constellation_kit.model.routed_experts.routed_experts`.

    No (T·K, D) copy of the tokens is made on CPU: each expert's rows are gathered, run through
    both projections and index-added into the output while they are in cache, one expert after
    another, each matmul on the intra-op threads; the backward does the same. On Hopper GPUs in bf16 the operator runs
    ``torch._grouped_mm`` instead (one kernel per projection). Any device and dtype works; the
    operator has a fake kernel, so a compiled block keeps one graph.
    """

    def run_experts(
        self,
        x_TD: torch.Tensor,
        token_N: torch.Tensor,
        weights_N: torch.Tensor,
        tokens_per_expert_E: torch.Tensor,
        experts: SwiGLUExperts,
    ) -> torch.Tensor:
        device_type = x_TD.device.type
        if device_type == "cuda" and torch.is_autocast_enabled(device_type):
            # Autocast does not reach a custom operator: cast by hand, as it would for a matmul.
            x_TD = x_TD.to(torch.get_autocast_dtype(device_type))
        offsets_E = torch.cumsum(tokens_per_expert_E, 0).to(torch.int32)  # end row of each group
        y_TD, _ = routed_experts(
            x_TD,
            experts.gate_up_proj.to(x_TD.dtype),  # (E, D, 2H); a no-op outside autocast
            experts.down_proj.to(x_TD.dtype),  # (E, H, D)
            weights_N.to(x_TD.dtype),
            token_N,
            offsets_E,
            default_kernel(x_TD, x_TD.shape[-1], experts.hidden_dim),
        )
        return y_TD
