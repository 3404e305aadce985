"""Every dispatcher against a per-token reference written here: outputs and every gradient, fp32."""

import pytest
import torch
import torch.nn.functional as F

from constellation_kit.model import GroupedMMDispatch, LoopDispatch, MoEFeedForward, TopKRouter
from constellation_kit.model.dispatch import grouped_mm_supported

IMPLEMENTATIONS = [LoopDispatch, GroupedMMDispatch]


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


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("num_experts,top_k", [(4, 2), (8, 1), (6, 3)])
def test_dispatch_matches_per_token_reference(implementation, num_experts: int, top_k: int) -> None:
    layer = make_layer(num_experts, top_k, implementation())
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


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_capacity_factor_drops_in_token_order_and_reports_it(implementation) -> None:
    layer = make_layer(4, 2, implementation(capacity_factor=0.5))
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


def test_grouped_mm_path_is_taken_on_cpu_fp32() -> None:
    layer = make_layer(4, 2, GroupedMMDispatch())
    assert grouped_mm_supported(torch.randn(3, 8), layer.experts)
    assert not grouped_mm_supported(torch.randn(3, 8, dtype=torch.float64), layer.experts)


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
def test_grouped_mm_bf16_on_cuda_matches_loop() -> None:
    layer = make_layer(8, 2, GroupedMMDispatch(), d_model=64, hidden=32).cuda().bfloat16()
    x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    reference = MoEFeedForward.forward.__get__(layer)
    y_fast, routing = reference(x)
    y_ref, _ = LoopDispatch()(x, routing, layer.experts)
    torch.testing.assert_close(y_fast, y_ref, rtol=2e-2, atol=2e-2)
