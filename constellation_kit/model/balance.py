"""Router balance pieces: each a small loss on the routers' outputs, with its own coefficient.

A recipe lists the pieces it wants (``model.init_args.balance``); the LightningModule adds
``coefficient × value`` of each to the loss and logs each ``value`` unscaled as ``moe/<name>``.
A piece sees every MoE layer's :class:`~constellation_kit.model.router.RouterOutput` as
``(layer_index, routing)`` pairs, exactly what the transformer returns in ``TransformerOutput.aux``.

To add one, subclass :class:`BalanceLoss` and implement :meth:`BalanceLoss.layer_value` (or
:meth:`BalanceLoss.value` for a non-per-layer term); then name the class in the recipe.

The auxiliary-loss-free bias balancer (DeepSeek-V3) is not a loss: it is an optimizer-step-time
update of the routers' ``expert_bias`` and lives in
:class:`constellation_kit.callbacks.AuxLossFreeBalancer`.
"""

from collections.abc import Sequence

import torch

from constellation_kit.model.router import RouterOutput

LayerRouting = Sequence[tuple[int, RouterOutput]]
"""``(layer_index, routing)`` for every MoE layer, in layer order."""


class BalanceLoss:
    """Base class: a scalar computed from the routers' outputs, scaled by ``coefficient``.

    The default :meth:`value` is the mean of :meth:`layer_value` over MoE layers, so a per-layer
    normalisation (Switch's "1.0 at perfect balance") survives any depth.

    Args:
        coefficient: weight of this piece in the training loss.
    """

    name: str = "balance"
    """Metric name: logged unscaled as ``moe/<name>``."""

    def __init__(self, coefficient: float = 0.01) -> None:
        self.coefficient = coefficient

    def layer_value(self, routing: RouterOutput) -> torch.Tensor:
        """This piece's value for one layer (a scalar tensor)."""
        raise NotImplementedError

    def value(self, layers: LayerRouting) -> torch.Tensor:
        """The unscaled value over all MoE layers (a scalar tensor)."""
        return torch.stack([self.layer_value(routing) for _, routing in layers]).mean()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(coefficient={self.coefficient})"


class SwitchBalanceLoss(BalanceLoss):
    """Switch Transformer load-balance loss (Fedus et al. 2022, eq. 4), generalised to top-k.

    Per layer: ``E · Σ_i f_i · P_i``, where ``f_i`` is the fraction of the T·K token copies routed to
    expert ``i`` (counts, no gradient) and ``P_i`` the mean over tokens of the router's probability for
    ``i`` (with gradient). Convention: with both normalised to sum to 1 over experts, perfect balance
    (``f_i = P_i = 1/E``) gives exactly **1.0** for any E and K, and total collapse onto one expert
    ``j`` gives ``E · P_j`` (``E`` when the router is also certain). Sigmoid scores are normalised per
    token first (DeepSeek-V3 eq. 19). The value is averaged over layers. Switch's coefficient: 0.01.
    """

    name = "switch_balance"

    def __init__(self, coefficient: float = 0.01) -> None:
        super().__init__(coefficient)

    def layer_value(self, routing: RouterOutput) -> torch.Tensor:
        counts_E = routing.tokens_per_expert_E.float()
        fraction_E = counts_E / counts_E.sum().clamp_min(1.0)
        probs_TE = routing.scores_TE / routing.scores_TE.sum(dim=-1, keepdim=True)
        return routing.num_experts * (fraction_E * probs_TE.mean(dim=0)).sum()


class RouterZLoss(BalanceLoss):
    """Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): mean over tokens of ``logsumexp(logits)²``.

    Keeps router logits small, so the fp32 softmax stays well conditioned and bf16 round-off in the
    layer input cannot flip choices. Averaged over layers. ST-MoE's coefficient: 1e-3.
    """

    name = "router_z_loss"

    def __init__(self, coefficient: float = 1e-3) -> None:
        super().__init__(coefficient)

    def layer_value(self, routing: RouterOutput) -> torch.Tensor:
        return torch.logsumexp(routing.logits_TE.float(), dim=-1).square().mean()


class RouterL2Penalty(BalanceLoss):
    """Explicit L2 penalty on the router weights: ``Σ_layers ‖W_router‖²`` (squared Frobenius norm).

    Constellation-XL's balance mechanism. It is a loss term, so it passes through the gradient and
    Adam's normalisation, unlike AdamW's decoupled weight decay, which shrinks weights directly and
    also applies to the router; the two are separate knobs. Summed (not averaged) over layers,
    like weight decay. The paper gives no coefficient; 1e-3 is this kit's default.
    """

    name = "router_l2"

    def __init__(self, coefficient: float = 1e-3) -> None:
        super().__init__(coefficient)

    def layer_value(self, routing: RouterOutput) -> torch.Tensor:
        return routing.router_weight.float().square().sum()

    def value(self, layers: LayerRouting) -> torch.Tensor:
        return torch.stack([self.layer_value(routing) for _, routing in layers]).sum()
