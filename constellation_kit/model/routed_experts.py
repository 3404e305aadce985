"""All routed SwiGLU experts of one MoE layer as one custom operator, gather and scatter fused in.

Shape legend: ``T`` tokens, ``D`` model width, ``E`` experts, ``H`` expert hidden width, ``N`` token
copies sorted by expert (``T·K`` when dropless).

For token copy ``n`` of token ``t = token_N[n]``, routed to expert ``e`` with combine weight ``w_n``::

    y_TD[t] += w_n · (silu(x_t G_e) * (x_t U_e)) W_e          (gate_up_proj[e] = [G_e | U_e], down_proj[e] = W_e)

:func:`routed_experts` computes that sum for every copy at once and returns ``y_TD`` (T, D). Where
the copies' rows live is the point of the operator. The unfused form materialises them: gather
``x_TD[token_N]`` into an (N, D) buffer, matmul, matmul into another (N, D) buffer, index-add back;
its backward makes two more (N, D) buffers (the gathered output gradient, the input gradient
before the scatter). With fine-grained experts N = 8·T, so each is 8x the layer's input: at the
benchmark's OLMoE-like shape, four 64 MB buffers a step, each a fresh allocation that on CPU is
also 16,000 page faults (glibc mmaps every buffer over 32 MB). Here, on CPU, each expert's rows
are gathered into a small per-expert block, go through both matmuls and the activation while they
are still in cache, and are index-added straight into the (T, D) output; the backward does the
same with the output gradient. The only (N, ·) tensor is the (N, 2H) gate/up activation that the
backward needs, the one a dense SwiGLU of the same active width keeps too. The sort by expert
(``token_N``, ``offsets_E``) is computed once per layer by the dispatcher and reused by the backward.

Experts run one after another on the calling thread, each matmul on its intra-op threads. A pool of
one-thread workers, one per range of experts, looked faster on a busy machine, but on a quiet one it
lost: 1.52x dense at the fine shape against 1.25x inline, and the tiny recipe's steps ran 1.7 against
2.8 per second (OpenMP teams spinning beside the workers; ``benchmarks/RESULTS.md``, issue 15).
Splitting each expert's rows into smaller blocks, so that a block stays in a core's L2, was slower
too. At the benchmark's fine shape (about 512 rows per expert), blocks of 256 rows made the operator
1.18x slower and blocks of 128 rows 1.34x. Each block re-reads the expert's weights, and smaller
matmuls run less efficiently.

On CUDA (sm90+, bf16, 16-byte-aligned widths) the operator runs the grouped kernel
``torch._grouped_mm`` on the materialised copies instead: one kernel per projection beats a Python
loop over experts there, and the copies are cheap in HBM. Both kernels compute the same function
and are tested against each other and a per-token loop on CPU (``_grouped_mm`` runs there too).

The operator has a fake kernel (shapes only) and an autograd formula that is a second custom
operator, so a compiled block keeps one graph with the routed experts as one extern call each way.
"""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

KERNELS = ("loop", "grouped")


def grouped_mm_supported(x: torch.Tensor, in_width: int, hidden_width: int) -> bool:
    """Whether ``torch._grouped_mm`` runs rows of ``x``'s device and dtype with these widths."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    aligned = 16 // x.element_size()  # rows must start on 16-byte boundaries
    if in_width % aligned or hidden_width % aligned:
        return False
    if x.device.type == "cuda":
        # The CUDA kernel is the Hopper (sm90+) bf16 path.
        return torch.cuda.get_device_capability(x.device) >= (9, 0) and x.dtype == torch.bfloat16
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)


def default_kernel(x: torch.Tensor, d_model: int, hidden_dim: int) -> str:
    """``"grouped"`` on CUDA where ``torch._grouped_mm`` runs these shapes, else ``"loop"``.

    On CPU the loop wins even where the grouped kernel runs: it never materialises the copies.
    """
    if x.device.type == "cuda" and grouped_mm_supported(x, d_model, hidden_dim):
        return "grouped"
    return "loop"


# ---------------------------------------------------------------------------------------------
# The operator and its backward.


@torch.library.custom_op("constellation::routed_experts", mutates_args=())
def routed_experts(
    x_TD: torch.Tensor,
    gate_up_EDH2: torch.Tensor,
    down_EHD: torch.Tensor,
    weights_N: torch.Tensor,
    token_N: torch.Tensor,
    offsets_E: torch.Tensor,
    kernel: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y_TD`` (T, D): every copy's weighted expert output summed into its token (module docstring).

    ``token_N`` (N,) int64 and ``weights_N`` (N,) list the copies sorted by expert; ``offsets_E``
    (E,) int32 is the end row of each expert's group. Also returns the (N, 2H) gate/up activation,
    which only the backward reads. ``kernel``: ``"loop"`` or ``"grouped"``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"routed_experts kernel={kernel!r}: choose one of {KERNELS}")
    with _plain_compute(x_TD):
        if kernel == "grouped":
            return _grouped_forward(x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E)
        return _loop_forward(x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E)


@routed_experts.register_fake
def _(x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E, kernel):
    return x_TD.new_empty(x_TD.shape[0], down_EHD.shape[-1]), x_TD.new_empty(token_N.shape[0], gate_up_EDH2.shape[-1])


@torch.library.custom_op("constellation::routed_experts_backward", mutates_args=())
def routed_experts_backward(
    grad_TD: torch.Tensor,
    x_TD: torch.Tensor,
    gate_up_EDH2: torch.Tensor,
    down_EHD: torch.Tensor,
    weights_N: torch.Tensor,
    token_N: torch.Tensor,
    offsets_E: torch.Tensor,
    gate_up_N2H: torch.Tensor,
    kernel: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`routed_experts` for ``x_TD``, both expert weights and ``weights_N``.

    Experts that received no copies get exactly zero weight gradients.
    """
    with _plain_compute(x_TD):
        args = (grad_TD.contiguous(), x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E, gate_up_N2H)
        return _grouped_backward(*args) if kernel == "grouped" else _loop_backward(*args)


@routed_experts_backward.register_fake
def _(grad_TD, x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E, gate_up_N2H, kernel):
    return (torch.empty_like(x_TD), torch.empty_like(gate_up_EDH2), torch.empty_like(down_EHD), torch.empty_like(weights_N))


def _setup_context(ctx, inputs, output):
    x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E, kernel = inputs
    _, gate_up_N2H = output
    ctx.save_for_backward(x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E, gate_up_N2H)
    ctx.kernel = kernel
    # The gate/up output never receives a gradient; materialising one would zero-fill an (N, 2H)
    # tensor every step (10 ms of the fine shape's ~300).
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_TD, _grad_gate_up):
    # The gate/up output is an internal activation for this backward; nothing downstream uses it.
    x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E, gate_up_N2H = ctx.saved_tensors
    if grad_TD is None:  # the output was not used
        return (None,) * 7
    grads = routed_experts_backward(
        grad_TD, x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E, gate_up_N2H, ctx.kernel
    )
    return (*grads, None, None, None)


routed_experts.register_autograd(_backward, setup_context=_setup_context)


@contextlib.contextmanager
def _plain_compute(x: torch.Tensor) -> Iterator[None]:
    # Autocast does not reach a private op's insides consistently: the caller casts, and everything
    # in here runs in the dtype it is given. No grad mode either: the weights require grad, and a
    # recorded graph would refuse the out= writes.
    with torch.autocast(device_type=x.device.type, enabled=False), torch.no_grad():
        yield


# ---------------------------------------------------------------------------------------------
# Loop kernel: per-expert blocks, in cache, on the calling thread's intra-op threads.


def _loop_forward(x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E):
    hidden = down_EHD.shape[1]
    gate_up_N2H = x_TD.new_empty(token_N.shape[0], gate_up_EDH2.shape[-1])
    y_TD = x_TD.new_zeros(x_TD.shape[0], down_EHD.shape[-1])
    groups = _Groups(offsets_E)
    # Each expert's row blocks are the leading rows of these.
    x_bD, hidden_bH, y_bD = groups.blocks(x_TD, x_TD.shape[1], hidden, y_TD.shape[1])
    # Scale whichever of hidden and output is narrower: the same product (the down projection is
    # linear), fewer multiplies.
    scale_hidden = hidden <= y_TD.shape[1]
    for e, n, token_n, weight_n1, gate_up_n2H in groups.split(token_N, weights_N[:, None], gate_up_N2H):
        x_nD = torch.index_select(x_TD, 0, token_n, out=x_bD[:n])
        torch.mm(x_nD, gate_up_EDH2[e], out=gate_up_n2H)
        hidden_nH = torch.ops.aten.silu.out(gate_up_n2H[:, :hidden], out=hidden_bH[:n]).mul_(gate_up_n2H[:, hidden:])
        if scale_hidden:
            y_nD = torch.mm(hidden_nH.mul_(weight_n1), down_EHD[e], out=y_bD[:n])
        else:
            y_nD = torch.mm(hidden_nH, down_EHD[e], out=y_bD[:n]).mul_(weight_n1)
        y_TD.index_add_(0, token_n, y_nD)
    return y_TD, gate_up_N2H


def _loop_backward(grad_TD, x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E, gate_up_N2H):
    hidden = down_EHD.shape[1]
    grad_gate_up_EDH2 = torch.empty_like(gate_up_EDH2)
    grad_down_EHD = torch.empty_like(down_EHD)
    grad_weights_N = torch.empty_like(weights_N)
    grad_x_TD = torch.zeros_like(x_TD)
    groups = _Groups(offsets_E)
    for e in groups.empty:
        grad_gate_up_EDH2[e].zero_()
        grad_down_EHD[e].zero_()
    grad_bD, x_bD, act_bH, hidden_bH, grad_hidden_bH, grad_gate_up_b2H = groups.blocks(
        x_TD, x_TD.shape[1], x_TD.shape[1], hidden, hidden, hidden, 2 * hidden
    )
    for e, n, token_n, weight_n1, gate_up_n2H, grad_weight_n in groups.split(
        token_N, weights_N[:, None], gate_up_N2H, grad_weights_N
    ):
        gate_nH, up_nH = gate_up_n2H[:, :hidden], gate_up_n2H[:, hidden:]
        grad_nD = torch.index_select(grad_TD, 0, token_n, out=grad_bD[:n])
        act_nH = torch.ops.aten.silu.out(gate_nH, out=act_bH[:n])
        hidden_nH = torch.mul(act_nH, up_nH, out=hidden_bH[:n])  # recomputed: cheaper than keeping an (N, H) tensor
        # d/d(hidden) of the unweighted output; dotted with hidden it is the combine weight's gradient.
        grad_hidden_nH = torch.mm(grad_nD, down_EHD[e].t(), out=grad_hidden_bH[:n])
        torch.linalg.vecdot(grad_hidden_nH, hidden_nH, out=grad_weight_n)
        torch.mm(hidden_nH.mul_(weight_n1).t(), grad_nD, out=grad_down_EHD[e])
        grad_hidden_nH.mul_(weight_n1)
        # Written straight into the halves of one (n, 2H) block: no concatenation afterwards.
        grad_gate_up_n2H = grad_gate_up_b2H[:n]
        torch.mul(grad_hidden_nH, act_nH, out=grad_gate_up_n2H[:, hidden:])
        torch.ops.aten.silu_backward.grad_input(
            grad_hidden_nH.mul_(up_nH), gate_nH, grad_input=grad_gate_up_n2H[:, :hidden]
        )
        x_nD = torch.index_select(x_TD, 0, token_n, out=x_bD[:n])
        torch.mm(x_nD.t(), grad_gate_up_n2H, out=grad_gate_up_EDH2[e])
        # The output-gradient rows are spent: their block takes the input gradient's.
        grad_x_TD.index_add_(0, token_n, torch.mm(grad_gate_up_n2H, gate_up_EDH2[e].t(), out=grad_bD[:n]))
    return grad_x_TD, grad_gate_up_EDH2, grad_down_EHD, grad_weights_N


class _Groups:
    """The experts' row groups from ``offsets_E``: per-expert views of (N, ...) tensors, and reusable blocks."""

    def __init__(self, offsets_E: torch.Tensor) -> None:
        ends = offsets_E.tolist()
        self.counts = [end - start for start, end in zip([0, *ends], ends)]
        self.empty = [e for e, n in enumerate(self.counts) if n == 0]

    def blocks(self, like: torch.Tensor, *widths: int) -> list[torch.Tensor]:
        """One (rows of the largest group, width) block per width, reused by every expert: one
        allocation per call and operand instead of one per expert."""
        rows = max(self.counts, default=0)
        return [like.new_empty(rows, width) for width in widths]

    def split(self, *tensors_N: torch.Tensor):
        """Yields ``(e, n, *views)`` for every expert with rows, each view that expert's rows of a tensor."""
        views = [tensor.split(self.counts) for tensor in tensors_N]
        for e, n in enumerate(self.counts):
            if n:
                yield (e, n, *(v[e] for v in views))


# ---------------------------------------------------------------------------------------------
# Grouped kernel: the same function on materialised copies, one torch._grouped_mm per projection.


def _grouped_forward(x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E):
    hidden = down_EHD.shape[1]
    x_ND = x_TD.index_select(0, token_N)
    gate_up_N2H = torch._grouped_mm(x_ND, gate_up_EDH2, offsets_E)
    hidden_NH = F.silu(gate_up_N2H[:, :hidden]) * gate_up_N2H[:, hidden:] * weights_N[:, None]
    y_ND = torch._grouped_mm(hidden_NH, down_EHD, offsets_E)
    return x_TD.new_zeros(x_TD.shape[0], y_ND.shape[-1]).index_add_(0, token_N, y_ND), gate_up_N2H


def _grouped_backward(grad_TD, x_TD, gate_up_EDH2, down_EHD, weights_N, token_N, offsets_E, gate_up_N2H):
    hidden = down_EHD.shape[1]
    gate_NH, up_NH = gate_up_N2H[:, :hidden], gate_up_N2H[:, hidden:]
    grad_ND = grad_TD.index_select(0, token_N)
    act_NH = F.silu(gate_NH)
    hidden_NH = act_NH * up_NH
    grad_hidden_NH = torch._grouped_mm(grad_ND, down_EHD.transpose(-2, -1), offsets_E)
    grad_weights_N = torch.linalg.vecdot(grad_hidden_NH, hidden_NH)
    # (H, N) x (N, D) grouped along N, the 2-D x 2-D form: one (H, D) block per expert, zero where
    # an expert has no rows.
    grad_down_EHD = torch._grouped_mm((hidden_NH * weights_N[:, None]).t(), grad_ND, offsets_E)
    grad_hidden_NH = grad_hidden_NH * weights_N[:, None]
    grad_gate_up_N2H = torch.cat([torch.ops.aten.silu_backward(grad_hidden_NH * up_NH, gate_NH), grad_hidden_NH * act_NH], -1)
    grad_gate_up_EDH2 = torch._grouped_mm(x_TD.index_select(0, token_N).t(), grad_gate_up_N2H, offsets_E)
    grad_x_ND = torch._grouped_mm(grad_gate_up_N2H, gate_up_EDH2.transpose(-2, -1), offsets_E)
    grad_x_TD = torch.zeros_like(x_TD).index_add_(0, token_N, grad_x_ND)
    return grad_x_TD, grad_gate_up_EDH2, grad_down_EHD, grad_weights_N
