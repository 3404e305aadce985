"""Every dispatcher against a per-token reference written here: outputs and every gradient, fp32.

``GroupedMMDispatch`` runs the fused operator ``constellation::routed_experts``; on CPU its loop
kernel, at 1, 2 and 3 intra-op threads (results must not depend on them), and also the grouped
kernel forced (``torch._grouped_mm``, what CUDA runs).
"""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from constellation_kit.model import GroupedMMDispatch, LoopDispatch, MoEFeedForward, TopKRouter
from constellation_kit.model import dispatch as dispatch_module
from constellation_kit.model.routed_experts import grouped_mm_supported, routed_experts, routed_experts_backward


def per_token_reference(x_TD, layer: MoEFeedForward, capacity_factor=None) -> torch.Tensor:
    """Each token, each of its K copies, one at a time: sum_k w_tk · expert_{e_tk}(x_t)."""
    routing = layer.router(x_TD)
    num_tokens, top_k = routing.experts_TK.shape
    num_experts = layer.experts.num_experts
    capacity = None if capacity_factor is None else -(-capacity_factor * num_tokens * top_k // num_experts)
    used = [0] * num_experts
    rows = []
    for t in range(num_tokens):
        y = torch.zeros_like(x_TD[t])
        for k in range(top_k):
            e = int(routing.experts_TK[t, k])
            used[e] += 1
            if capacity is not None and used[e] > capacity:
                continue  # over capacity: dropped, in token order
            gate, up = (x_TD[t] @ layer.experts.gate_up_proj[e]).chunk(2)
            y = y + routing.weights_TK[t, k] * ((F.silu(gate) * up) @ layer.experts.down_proj[e])
        rows.append(y)
    return torch.stack(rows)


def make_layer(num_experts: int, top_k: int, dispatch, d_model: int = 8, hidden: int = 4) -> MoEFeedForward:
    torch.manual_seed(0)
    return MoEFeedForward(
        d_model,
        num_experts=num_experts,
        expert_hidden_dim=hidden,
        # K = 1 with renormalisation makes every weight 1.0 and the router gradient pure round-off.
        router=lambda d, e: TopKRouter(d, e, top_k=top_k, renormalize=top_k > 1, init_std=0.5),
        dispatch=dispatch,
        init_std=0.3,
    )


def outputs_and_grads(layer: MoEFeedForward, x: torch.Tensor, forward) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = forward(x)
    torch.manual_seed(1)
    (y * torch.randn_like(y)).sum().backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    return [y.detach()] + grads


def assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    names = ["output", "grad x"] + [f"grad param {i}" for i in range(len(want) - 2)]
    for name, g, w in zip(names, got, want, strict=True):
        rel = ((g - w).norm() / w.norm().clamp_min(1e-30)).item()
        assert rel <= 1e-5, f"{name}: relative error {rel:.2e}"


@contextlib.contextmanager
def threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# (dispatcher, kernel of the fused operator, intra-op threads): the loop kernel at 1, 2 and 3
# threads, and the grouped kernel.
VARIANTS = [
    (LoopDispatch, None, 2),
    (GroupedMMDispatch, "loop", 1),
    (GroupedMMDispatch, "loop", 2),
    (GroupedMMDispatch, "loop", 3),
    (GroupedMMDispatch, "grouped", 2),
]


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v[0].__name__}-{v[1]}-{v[2]}threads")
def variant(request, monkeypatch):
    implementation, kernel, count = request.param
    if kernel is not None:
        monkeypatch.setattr(dispatch_module, "default_kernel", lambda *args: kernel)
    with threads(count):
        yield implementation


@pytest.mark.parametrize("num_experts,top_k", [(4, 2), (8, 1), (6, 3)])
def test_dispatch_matches_per_token_reference(variant, num_experts: int, top_k: int) -> None:
    layer = make_layer(num_experts, top_k, variant())
    # Steer the choice (bias only) so two experts get no tokens: their weight grads must be exact zeros.
    layer.router.expert_bias[-2:] = -1e4
    x = torch.randn(2, 9, 8) * 2  # (B, S, D)
    routing = layer.router(x.reshape(-1, 8))
    assert (routing.tokens_per_expert_E == 0).sum() >= 2

    want = outputs_and_grads(layer, x, lambda x: per_token_reference(x.reshape(-1, 8), layer).view_as(x))
    got = outputs_and_grads(layer, x, lambda x: layer(x)[0])
    assert_close(got, want)
    grad_gate_up, grad_down = got[3], got[4]  # parameters: router.weight, gate_up_proj, down_proj
    assert grad_gate_up.shape == layer.experts.gate_up_proj.shape
    assert torch.count_nonzero(grad_gate_up[-2:]) == 0 and torch.count_nonzero(grad_down[-2:]) == 0


def test_capacity_factor_drops_in_token_order_and_reports_it(variant) -> None:
    layer = make_layer(4, 2, variant(capacity_factor=0.5))
    x = torch.randn(16, 8) * 2
    want = outputs_and_grads(layer, x, lambda x: per_token_reference(x, layer, capacity_factor=0.5))
    got = outputs_and_grads(layer, x, lambda x: layer(x)[0])
    assert_close(got, want)
    _, routing = layer(x)
    capacity = 4  # ceil(0.5 · 16 · 2 / 4)
    expected = (routing.tokens_per_expert_E - capacity).clamp(min=0).sum().item() / 32
    assert expected > 0
    assert routing.dropped_fraction.item() == pytest.approx(expected)


def test_dropless_reports_zero_dropped() -> None:
    _, routing = make_layer(4, 2, GroupedMMDispatch())(torch.randn(5, 8))
    assert routing.dropped_fraction.item() == 0.0


def test_grouped_kernel_is_chosen_only_where_cuda_runs_it() -> None:
    # CPU always takes the loop kernel: it never materialises the (T·K, D) copies.
    assert dispatch_module.default_kernel(torch.randn(3, 8), 8, 4) == "loop"
    assert grouped_mm_supported(torch.randn(3, 8), 8, 4)
    assert not grouped_mm_supported(torch.randn(3, 8, dtype=torch.float64), 8, 4)
    assert not grouped_mm_supported(torch.randn(3, 6), 6, 4)  # rows not 16-byte aligned


def operator_inputs(num_tokens=10, d_model=8, hidden=4, num_experts=5, top_k=2, empty=(3,)):
    """Random routed_experts inputs, expert ``empty`` receiving no copies, ``x`` and weights requiring grad."""
    generator = torch.Generator().manual_seed(3)
    scores = torch.rand(num_tokens, num_experts, generator=generator)
    scores[:, list(empty)] = -1
    experts_N = scores.topk(top_k, dim=-1).indices.flatten()
    order_N = torch.argsort(experts_N, stable=True)
    offsets_E = torch.cumsum(torch.bincount(experts_N, minlength=num_experts), 0).to(torch.int32)
    return (
        torch.randn(num_tokens, d_model, generator=generator).requires_grad_(),
        (torch.randn(num_experts, d_model, 2 * hidden, generator=generator) * 0.5).requires_grad_(),
        (torch.randn(num_experts, hidden, d_model, generator=generator) * 0.5).requires_grad_(),
        torch.rand(order_N.numel(), generator=generator).requires_grad_(),
        order_N // top_k,
        offsets_E,
    )


@pytest.mark.parametrize("kernel", ["loop", "grouped"])
def test_routed_experts_operator_passes_opcheck(kernel: str) -> None:
    # Schema, fake kernel, autograd registration and AOT dispatch, as torch.compile would use them.
    inputs = operator_inputs()
    with threads(2):
        torch.library.opcheck(routed_experts, (*inputs, kernel))
        _, gate_up_N2H = routed_experts(*inputs, kernel)
        grad_TD = torch.randn_like(inputs[0])
        detached = [t.detach() for t in inputs]
        torch.library.opcheck(routed_experts_backward, (grad_TD, *detached, gate_up_N2H.detach(), kernel))


def test_loop_and_grouped_kernels_agree_and_zero_empty_experts() -> None:
    results = []
    for kernel, count in [("grouped", 1), ("loop", 1), ("loop", 2), ("loop", 4)]:
        inputs = operator_inputs(num_tokens=40, d_model=16, hidden=8, num_experts=7, top_k=3, empty=(0, 4))
        with threads(count):
            y_TD, _ = routed_experts(*inputs, kernel)
            y_TD.backward(torch.ones_like(y_TD))
        results.append([y_TD.detach()] + [t.grad for t in inputs[:4]])
    for result in results[1:]:
        for got, want in zip(result, results[0], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for result in results:  # experts 0 and 4 saw no rows: exactly zero weight gradients
        assert torch.count_nonzero(result[2][[0, 4]]) == 0 and torch.count_nonzero(result[3][[0, 4]]) == 0


def test_inference_mode_gives_the_no_grad_output() -> None:
    layer = make_layer(6, 2, GroupedMMDispatch())
    x = torch.randn(32, 8)
    with threads(2):
        with torch.no_grad():
            expected, _ = layer(x)
        with torch.inference_mode():
            got, _ = layer(x)
    torch.testing.assert_close(got, expected)


def test_shared_expert_adds_a_dense_swiglu_on_every_token() -> None:
    torch.manual_seed(0)
    layer = MoEFeedForward(8, num_experts=4, expert_hidden_dim=4, num_shared_experts=2)
    x = torch.randn(6, 8)
    y, routing = layer(x)
    routed, _ = layer.dispatch(x, routing, layer.experts)
    torch.testing.assert_close(y, routed + layer.shared_experts(x))
    assert layer.shared_experts.hidden_dim == 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_routed_experts_on_cuda_matches_loop_in_outputs_and_gradients() -> None:
    # sm90+ takes the grouped kernel (torch._grouped_mm), older GPUs the loop kernel: either way
    # the fused operator must compute what the per-expert loop does, forward and backward.
    layer = make_layer(8, 2, GroupedMMDispatch(), d_model=64, hidden=32).cuda().bfloat16()
    x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    routing = layer.router(x)
    results = []
    for dispatch in (GroupedMMDispatch(), LoopDispatch()):
        experts = copy.deepcopy(layer.experts)
        x_in = x.clone().requires_grad_()
        y, _ = dispatch(x_in, routing, experts)
        y.float().square().sum().backward(retain_graph=True)
        results.append([y.detach(), x_in.grad, experts.gate_up_proj.grad, experts.down_proj.grad, layer.router.weight.grad])
        layer.router.weight.grad = None
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
