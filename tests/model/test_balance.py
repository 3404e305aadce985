"""Balance pieces on constructed routings, against their closed forms."""

import math

import pytest
import torch

from constellation_kit.model import RouterL2Penalty, RouterOutput, RouterZLoss, SwitchBalanceLoss, TopKRouter


def routing_from(logits_TE: torch.Tensor, experts_TK: torch.Tensor, weight: torch.Tensor | None = None) -> RouterOutput:
    num_experts = logits_TE.shape[-1]
    return RouterOutput(
        logits_TE=logits_TE,
        scores_TE=logits_TE.softmax(-1),
        weights_TK=torch.ones(experts_TK.shape),
        experts_TK=experts_TK,
        tokens_per_expert_E=torch.bincount(experts_TK.flatten(), minlength=num_experts),
        router_weight=weight if weight is not None else torch.zeros(num_experts, 4),
    )


@pytest.mark.parametrize("num_experts,top_k", [(4, 1), (8, 2), (64, 8)])
def test_switch_loss_is_exactly_one_at_perfect_balance(num_experts: int, top_k: int) -> None:
    tokens = num_experts * 3
    # Uniform probabilities, and every expert chosen equally often.
    experts_TK = (torch.arange(tokens * top_k) % num_experts).view(tokens, top_k)
    value = SwitchBalanceLoss().value([(0, routing_from(torch.zeros(tokens, num_experts), experts_TK))])
    assert value.item() == pytest.approx(1.0, abs=1e-6)


def test_switch_loss_collapsed_onto_one_expert_is_E_times_its_mean_probability() -> None:
    num_experts, tokens = 8, 10
    logits_TE = torch.randn(tokens, num_experts)
    experts_TK = torch.full((tokens, 1), 3)
    value = SwitchBalanceLoss().layer_value(routing_from(logits_TE, experts_TK))
    assert value.item() == pytest.approx(num_experts * logits_TE.softmax(-1)[:, 3].mean().item(), rel=1e-6)
    certain = routing_from(torch.full((tokens, num_experts), -1e4).index_fill(1, torch.tensor([3]), 0.0), experts_TK)
    assert SwitchBalanceLoss().layer_value(certain).item() == pytest.approx(num_experts)


def test_switch_loss_gradient_flows_through_probabilities_only() -> None:
    logits_TE = torch.randn(6, 4, requires_grad=True)
    routing = routing_from(logits_TE, logits_TE.detach().topk(2).indices)
    SwitchBalanceLoss().value([(0, routing)]).backward()
    assert logits_TE.grad is not None and logits_TE.grad.abs().sum() > 0


def test_z_loss_matches_its_formula_and_averages_over_layers() -> None:
    a, b = torch.randn(5, 4) * 3, torch.randn(7, 4)
    expected_a = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in a.tolist()) / 5
    expected_b = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in b.tolist()) / 7
    experts = torch.zeros(1, 1, dtype=torch.long)
    layers = [(0, routing_from(a, experts.expand(5, 1))), (1, routing_from(b, experts.expand(7, 1)))]
    assert RouterZLoss().value(layers).item() == pytest.approx((expected_a + expected_b) / 2, rel=1e-5)


def test_router_l2_is_the_sum_of_squared_router_weights_over_layers() -> None:
    w0, w1 = torch.randn(4, 6), torch.randn(4, 6)
    logits, experts = torch.zeros(2, 4), torch.zeros(2, 1, dtype=torch.long)
    layers = [(0, routing_from(logits, experts, w0)), (2, routing_from(logits, experts, w1))]
    piece = RouterL2Penalty(coefficient=0.5)
    assert piece.value(layers).item() == pytest.approx((w0.square().sum() + w1.square().sum()).item(), rel=1e-6)
    assert piece.coefficient == 0.5


def test_router_routing_is_fp32_under_autocast_and_bias_only_steers_the_choice() -> None:
    torch.manual_seed(0)
    router = TopKRouter(16, 4, top_k=2)
    x = torch.randn(32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = router(x.bfloat16())
    assert out.logits_TE.dtype == out.weights_TK.dtype == torch.float32
    assert out.tokens_per_expert_E.sum().item() == 64
    torch.testing.assert_close(out.weights_TK.sum(-1), torch.ones(32))  # renormalised
    router.expert_bias[0] = 10.0
    biased = router(x)
    assert (biased.experts_TK == 0).any(dim=-1).all()  # expert 0 now always chosen...
    torch.testing.assert_close(biased.scores_TE, router(x).scores_TE)  # ...but scores are untouched
    assert "expert_bias" in router.state_dict()  # saved in checkpoints
    assert not router.expert_bias.requires_grad


def test_sigmoid_router_without_renormalisation_scales_the_raw_scores() -> None:
    router = TopKRouter(8, 6, top_k=3, score="sigmoid", renormalize=False, route_scale=2.5)
    out = router(torch.randn(5, 8))
    torch.testing.assert_close(out.weights_TK, 2.5 * out.logits_TE.sigmoid().gather(-1, out.experts_TK))
