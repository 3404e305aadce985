"""Dispatch: send each token copy to its expert, run the experts, combine the results.

Shape legend: ``T`` tokens, ``D`` width, ``E`` experts, ``K`` experts per token, ``N = T·K``
token copies, ``H`` expert hidden width.

Every implementation shares the bookkeeping in :class:`Dispatcher` and differs only in
:meth:`Dispatcher.run_experts`, which multiplies rows already sorted by expert::

    x_TD ──gather by sorted expert──► x_ND ──run_experts──► y_ND ──unsort, × weights_TK, sum over K──► y_TD

Dropless by default (MegaBlocks, Gale et al. 2022): every token copy is computed. With a
``capacity_factor`` each expert keeps at most ``ceil(capacity_factor · N / E)`` copies, in token
order (GShard §2.2); the rest contribute zero and their fraction is reported.
"""

import math

import torch
import torch.nn.functional as F

from constellation_kit.model.experts import SwiGLUExperts
from constellation_kit.model.router import RouterOutput


class Dispatcher:
    """Routes (T, D) tokens through stacked experts by a :class:`RouterOutput`; returns (T, D).

    Args:
        capacity_factor: ``None`` (default) is dropless; a number caps each expert at
            ``ceil(capacity_factor · T · K / E)`` token copies and drops the rest.
    """

    def __init__(self, capacity_factor: float | None = None) -> None:
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor={capacity_factor} must be positive (or None for dropless)")
        self.capacity_factor = capacity_factor

    def run_experts(self, x_ND: torch.Tensor, tokens_per_expert_E: torch.Tensor, experts: SwiGLUExperts) -> torch.Tensor:
        """Rows (N, D) sorted by expert, ``tokens_per_expert_E[e]`` of them for expert ``e`` -> (N, D)."""
        raise NotImplementedError

    def __call__(self, x_TD: torch.Tensor, routing: RouterOutput, experts: SwiGLUExperts) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``y_TD`` and the dropped fraction (a scalar tensor, 0 when dropless)."""
        num_tokens, top_k = routing.experts_TK.shape
        num_experts = experts.num_experts
        experts_N = routing.experts_TK.flatten()
        # Stable sort keeps token order inside each expert: that order decides who is dropped.
        order_N = torch.argsort(experts_N, stable=True)
        tokens_per_expert_E = routing.tokens_per_expert_E
        dropped = torch.zeros((), device=x_TD.device)
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * num_tokens * top_k / num_experts)
            starts_E = torch.cumsum(tokens_per_expert_E, 0) - tokens_per_expert_E
            position_N = torch.arange(order_N.numel(), device=x_TD.device) - starts_E[experts_N[order_N]]
            keep_N = position_N < capacity
            order_N = order_N[keep_N]
            kept_E = tokens_per_expert_E.clamp(max=capacity)
            dropped = 1.0 - kept_E.sum().float() / max(experts_N.numel(), 1)
            tokens_per_expert_E = kept_E
        if self.capacity_factor is None:
            # Dropless: every slot is filled, so the unsort is a permutation and both directions
            # are gathers (index_select), which parallelise, unlike the scatter-add autograd
            # would otherwise use for the backward of x_TD[order_N // K].
            inverse_N = torch.empty_like(order_N)
            inverse_N[order_N] = torch.arange(order_N.numel(), device=order_N.device)
            x_ND = _GatherTokens.apply(x_TD, order_N, inverse_N, top_k)
            y_ND = self.run_experts(x_ND, tokens_per_expert_E, experts)
            y_NkD = _Permute.apply(y_ND, inverse_N, order_N)
        else:
            x_ND = x_TD[order_N // top_k]  # (N_kept, D): copy k of token t sits at flat index t·K + k
            y_ND = self.run_experts(x_ND, tokens_per_expert_E, experts)
            # Unsort into (T·K, D) slots; dropped copies stay zero.
            y_NkD = y_ND.new_zeros(num_tokens * top_k, y_ND.shape[-1]).index_put((order_N,), y_ND)
        weights_TK1 = routing.weights_TK.to(y_ND.dtype).unsqueeze(-1)
        y_TD = (y_NkD.view(num_tokens, top_k, -1) * weights_TK1).sum(dim=1)
        return y_TD, dropped


class _Permute(torch.autograd.Function):
    """``x[index]`` for a permutation ``index``; the backward is the inverse permutation, a gather too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _GatherTokens(torch.autograd.Function):
    """Rows (N, D) = ``x_TD[order_N // K]``: each token K times, sorted by expert.

    Backward: unsort the row gradients to (T, K, D) slots with a gather and sum over K, instead of
    autograd's scatter-add into (T, D).
    """

    @staticmethod
    def forward(ctx, x_TD: torch.Tensor, order_N: torch.Tensor, inverse_N: torch.Tensor, top_k: int) -> torch.Tensor:
        ctx.save_for_backward(inverse_N)
        ctx.top_k = top_k
        return x_TD.index_select(0, order_N // top_k)

    @staticmethod
    def backward(ctx, grad_ND: torch.Tensor):
        (inverse_N,) = ctx.saved_tensors
        grad_TKD = grad_ND.index_select(0, inverse_N).view(-1, ctx.top_k, grad_ND.shape[-1])
        return grad_TKD.sum(dim=1), None, None, None


class LoopDispatch(Dispatcher):
    """Reference: a Python loop over experts, each a plain matmul on its rows (the Mixtral/HF form).

    Slow when there are many small experts (one kernel launch per expert and projection) but
    obviously correct; the tests hold every other implementation to it.
    """

    def run_experts(self, x_ND: torch.Tensor, tokens_per_expert_E: torch.Tensor, experts: SwiGLUExperts) -> torch.Tensor:
        outputs = []
        for expert, rows in enumerate(torch.split(x_ND, tokens_per_expert_E.tolist())):
            if rows.shape[0]:
                outputs.append(experts.expert_forward(rows, expert))
        return torch.cat(outputs) if outputs else x_ND.new_zeros(0, x_ND.shape[-1]) + 0 * x_ND.sum()


class _GroupedMM(torch.autograd.Function):
    """``torch._grouped_mm(a_ND, w_EIO, offsets)`` with a backward built from grouped matmuls too.

    torch 2.11 runs ``_grouped_mm`` on CPU (fp32, strides multiple of 16 bytes) for both the
    3-D-weight product and the 2-D × 2-D product a weight gradient needs, at dense-matmul speed,
    but registers no CPU autograd formula. The gradients are the textbook ones, per group ``e``:
    ``da_e = dy_e w_e^T`` and ``dw_e = a_e^T dy_e``; experts with no rows get ``dw_e = 0``.
    """

    @staticmethod
    def forward(ctx, a_NI: torch.Tensor, w_EIO: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a_NI, w_EIO, offsets_E)
        return torch._grouped_mm(a_NI, w_EIO, offsets_E)

    @staticmethod
    def backward(ctx, grad_NO: torch.Tensor):
        a_NI, w_EIO, offsets_E = ctx.saved_tensors
        grad_NO = grad_NO.contiguous()
        grad_a = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_a = torch._grouped_mm(grad_NO, w_EIO.transpose(-2, -1), offsets_E)
        if ctx.needs_input_grad[1]:
            # (I, N) × (N, O) grouped along N -> (E, I, O).
            grad_w = torch._grouped_mm(a_NI.t(), grad_NO, offsets_E)
        return grad_a, grad_w, None


def grouped_mm_supported(x: torch.Tensor, experts: SwiGLUExperts) -> bool:
    """Whether ``torch._grouped_mm`` can run these shapes and dtype on this device."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cuda":
        # The CUDA kernel is the Hopper (sm90+) bf16 path; rows must be 16-byte aligned (8 bf16 values).
        return (
            torch.cuda.get_device_capability(x.device) >= (9, 0)
            and x.dtype == torch.bfloat16
            and x.shape[-1] % 8 == 0
            and experts.hidden_dim % 8 == 0
        )
    if x.device.type == "cpu":
        # fp32 rows must be 16-byte aligned: widths a multiple of 4.
        return x.dtype == torch.float32 and x.shape[-1] % 4 == 0 and experts.hidden_dim % 4 == 0
    return False


class GroupedMMDispatch(Dispatcher):
    """The fast path: two grouped matmuls (``torch._grouped_mm``) for all experts at once.

    On CUDA (Hopper, bf16) it calls ``torch._grouped_mm`` and its native autograd (torchtitan's
    path); on CPU (fp32) it wraps it in :class:`_GroupedMM`, whose backward is grouped matmuls too.
    Where neither applies (other dtypes, widths not a multiple of 4 or 8, older GPUs), it falls
    back to the per-expert loop, so a recipe never fails for want of a kernel.
    """

    def run_experts(self, x_ND: torch.Tensor, tokens_per_expert_E: torch.Tensor, experts: SwiGLUExperts) -> torch.Tensor:
        device_type = x_ND.device.type
        if device_type == "cuda" and torch.is_autocast_enabled(device_type):
            # Autocast does not reach a private op: cast by hand, as it would for a matmul.
            x_ND = x_ND.to(torch.get_autocast_dtype(device_type))
        w_gate_up = experts.gate_up_proj.to(x_ND.dtype)  # (E, D, 2H); a no-op outside autocast
        w_down = experts.down_proj.to(x_ND.dtype)  # (E, H, D)
        if not grouped_mm_supported(x_ND, experts):
            return LoopDispatch.run_experts(self, x_ND, tokens_per_expert_E, experts)
        offsets_E = torch.cumsum(tokens_per_expert_E, 0).to(torch.int32)  # end row of each group
        if x_ND.device.type == "cuda":
            gate_up_N2H = torch._grouped_mm(x_ND, w_gate_up, offsets_E)
        else:
            gate_up_N2H = _GroupedMM.apply(x_ND, w_gate_up, offsets_E)
        gate_NH, up_NH = gate_up_N2H.chunk(2, dim=-1)
        hidden_NH = F.silu(gate_NH) * up_NH
        if x_ND.device.type == "cuda":
            return torch._grouped_mm(hidden_NH, w_down, offsets_E)
        return _GroupedMM.apply(hidden_NH, w_down, offsets_E)
