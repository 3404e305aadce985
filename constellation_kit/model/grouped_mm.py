"""``torch._grouped_mm`` as a custom operator with a fake kernel and an autograd formula, for every device.

Shape legend: ``N`` rows sorted by group, ``E`` groups (experts), ``I`` in width, ``O`` out width.

torch 2.11 runs ``torch._grouped_mm`` on CPU (fp32 and bf16, rows 16-byte aligned) at dense-matmul
speed, but registers neither a CPU autograd formula nor a fake-tensor kernel that accepts fp32
(its meta kernel demands bf16), so ``torch.compile`` could only reach it through a graph break.
Wrapped as ``constellation::grouped_mm`` with a shape-only fake kernel, it is one extern call in a
compiled graph; its backward is two more grouped matmuls, per group ``e``:
``da_e = dy_e w_eᵀ`` and ``dw_e = a_eᵀ dy_e`` (groups with no rows get ``dw_e = 0``).

On CUDA the same operator calls the same kernel, whose native autograd is then unused: one code
path, tested on CPU.
"""

import torch


@torch.library.custom_op("constellation::grouped_mm", mutates_args=())
def grouped_mm(a_NI: torch.Tensor, w_EIO: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """Row group ``e`` of ``a_NI`` (rows ``offsets_E[e-1]:offsets_E[e]``) times ``w_EIO[e]`` -> (N, O).

    ``offsets_E`` (E,) int32: the end row of each group.
    """
    return torch._grouped_mm(a_NI, w_EIO, offsets_E)


@grouped_mm.register_fake
def _(a_NI, w_EIO, offsets_E):
    return a_NI.new_empty(a_NI.shape[0], w_EIO.shape[-1])


@torch.library.custom_op("constellation::grouped_mm_weight_grad", mutates_args=())
def grouped_mm_weight_grad(a_NI: torch.Tensor, grad_NO: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """Per group ``e``, ``a_eᵀ grad_e`` -> (E, I, O): the weight gradient of :func:`grouped_mm`."""
    # (I, N) × (N, O) grouped along N: the 2-D × 2-D form of the kernel.
    return torch._grouped_mm(a_NI.t(), grad_NO, offsets_E)


@grouped_mm_weight_grad.register_fake
def _(a_NI, grad_NO, offsets_E):
    return a_NI.new_empty(offsets_E.shape[0], a_NI.shape[1], grad_NO.shape[1])


def _setup_context(ctx, inputs, output):
    a_NI, w_EIO, offsets_E = inputs
    ctx.save_for_backward(a_NI, w_EIO, offsets_E)


def _backward(ctx, grad_NO):
    a_NI, w_EIO, offsets_E = ctx.saved_tensors
    grad_NO = grad_NO.contiguous()
    grad_a = grad_w = None
    if ctx.needs_input_grad[0]:
        grad_a = grouped_mm(grad_NO, w_EIO.transpose(-2, -1), offsets_E)
    if ctx.needs_input_grad[1]:
        grad_w = grouped_mm_weight_grad(a_NI, grad_NO, offsets_E)
    return grad_a, grad_w, None


grouped_mm.register_autograd(_backward, setup_context=_setup_context)


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
