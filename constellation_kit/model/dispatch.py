"""Dispatch: send each token copy to its expert, run the experts, combine the results.

Shape legend: ``T`` tokens, ``D`` width, ``E`` experts, ``K`` experts per token, ``N = T·K``
token copies, ``H`` expert hidden width.

Every implementation shares the bookkeeping in :class:`Dispatcher` and differs only in
:meth:`Dispatcher.run_experts`, which runs the experts on rows already sorted by expert::

    x_TD ──gather, sorted by expert──► x_ND ──run_experts (× combine weight)──► y_ND ──index_add per token──► y_TD

Dropless by default (MegaBlocks, Gale et al. 2022): every token copy is computed. With a
``capacity_factor`` each expert keeps at most ``ceil(capacity_factor · N / E)`` copies, in token
order (GShard §2.2); the rest contribute zero and their fraction is reported.
"""

import math

import torch
import torch.nn.functional as F

from constellation_kit.errors import ConfigError
from constellation_kit.model.experts import SwiGLUExperts
from constellation_kit.model.grouped_mm import grouped_mm
from constellation_kit.model.grouped_mm import grouped_mm_supported as _grouped_mm_supported
from constellation_kit.model.router import RouterOutput


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
        self, x_ND: torch.Tensor, tokens_per_expert_E: torch.Tensor, experts: SwiGLUExperts, weights_N: torch.Tensor
    ) -> torch.Tensor:
        """Rows (N, D) sorted by expert, ``tokens_per_expert_E[e]`` of them for expert ``e`` -> (N, D),
        each row's expert output scaled by its combine weight ``weights_N`` (N,)."""
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
        weights_N = routing.weights_TK.flatten()[order_N]
        # index_select, not x_TD[token_N]: its backward is an index_add into (T, D), where advanced
        # indexing's is an accumulating index_put, several times slower on CPU.
        x_ND = x_TD.index_select(0, token_N)
        y_ND = self.run_experts(x_ND, tokens_per_expert_E, experts, weights_N)
        # Sum each token's K weighted copies straight from sorted order: no unsort, no (T, K, D) buffer
        # (fresh (T·K, D) buffers cost page faults on every call on CPU).
        y_TD = y_ND.new_zeros(num_tokens, y_ND.shape[-1]).index_add(0, token_N, y_ND)
        return y_TD, dropped


class LoopDispatch(Dispatcher):
    """Reference: a Python loop over experts, each a plain matmul on its rows (the Mixtral/HF form).

    Slow when there are many small experts (one kernel launch per expert and projection) but
    obviously correct; the tests hold every other implementation to it.
    """

    def run_experts(
        self, x_ND: torch.Tensor, tokens_per_expert_E: torch.Tensor, experts: SwiGLUExperts, weights_N: torch.Tensor
    ) -> torch.Tensor:
        counts = tokens_per_expert_E.tolist()
        outputs = []
        for expert, (rows, weights) in enumerate(zip(torch.split(x_ND, counts), torch.split(weights_N, counts))):
            if rows.shape[0]:
                outputs.append(experts.expert_forward(rows, expert) * weights.to(rows.dtype).unsqueeze(-1))
        return torch.cat(outputs) if outputs else x_ND.new_zeros(0, x_ND.shape[-1])


def grouped_mm_supported(x: torch.Tensor, experts: SwiGLUExperts) -> bool:
    """Whether ``torch._grouped_mm`` can run these shapes and dtype on this device."""
    return _grouped_mm_supported(x, x.shape[-1], experts.hidden_dim)


class GroupedMMDispatch(Dispatcher):
    """The fast path: two grouped matmuls (``torch._grouped_mm``) for all experts at once.

    Both go through :func:`~constellation_kit.model.grouped_mm.grouped_mm`, a custom operator with
    a fake kernel (so a compiled block keeps one graph) whose backward is grouped matmuls too; it
    runs on Hopper GPUs in bf16 and on CPUs in fp32 and bf16. Where it cannot (other dtypes, rows
    not 16-byte aligned, older GPUs), dispatch falls back to the per-expert loop, so a recipe never
    fails for want of a kernel.
    """

    def run_experts(
        self, x_ND: torch.Tensor, tokens_per_expert_E: torch.Tensor, experts: SwiGLUExperts, weights_N: torch.Tensor
    ) -> torch.Tensor:
        device_type = x_ND.device.type
        if device_type == "cuda" and torch.is_autocast_enabled(device_type):
            # Autocast does not reach a private op: cast by hand, as it would for a matmul.
            x_ND = x_ND.to(torch.get_autocast_dtype(device_type))
        w_gate_up = experts.gate_up_proj.to(x_ND.dtype)  # (E, D, 2H); a no-op outside autocast
        w_down = experts.down_proj.to(x_ND.dtype)  # (E, H, D)
        if not grouped_mm_supported(x_ND, experts):
            return LoopDispatch.run_experts(self, x_ND, tokens_per_expert_E, experts, weights_N)
        offsets_E = torch.cumsum(tokens_per_expert_E, 0).to(torch.int32)  # end row of each group
        gate_up_N2H = grouped_mm(x_ND, w_gate_up, offsets_E)
        gate_NH, up_NH = gate_up_N2H.chunk(2, dim=-1)
        # The combine weight scales the hidden row rather than the output row: the same product (the
        # down projection is linear) on a narrower tensor whenever H < D (fine-grained experts).
        hidden_NH = F.silu(gate_NH) * up_NH * weights_N.to(gate_NH.dtype).unsqueeze(-1)
        return grouped_mm(hidden_NH, w_down, offsets_E)
