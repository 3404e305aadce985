"""What the LightningModule makes of the MoE layers' router outputs: balance terms and load telemetry.

Shape legend: ``L`` MoE layers, ``E`` experts per layer. Everything here is computed from values
the routers already returned (counts, scores), on the device, without a host sync: the logger
converts to Python numbers only when it writes, once per log interval.
"""

from collections.abc import Sequence
from typing import Any

import torch

from constellation_kit.model.balance import BalanceLoss
from constellation_kit.model.router import RouterOutput

LOAD_KEY = "moe_tokens_per_expert"
"""Key of the (L, E) per-expert token counts in training/validation step outputs (callbacks read it)."""
LAYERS_KEY = "moe_layers"
"""Key of the MoE layers' indices, in the same order as the rows of the counts."""
BALANCE_KEY = "moe_balance"
"""Key of the micro-batch's balance values in training step outputs: ``{"moe/<name>": value}``, unscaled."""


def routing_layers(aux: Sequence[tuple[int, Any]]) -> list[tuple[int, RouterOutput]]:
    """The ``(layer_index, RouterOutput)`` entries of a ``TransformerOutput.aux`` list."""
    return [(index, value) for index, value in aux if isinstance(value, RouterOutput)]


def balance_terms(pieces: Sequence[BalanceLoss], layers: Sequence[tuple[int, RouterOutput]]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """``Σ coefficient · value`` over the pieces, and each unscaled value by ``moe/<name>``."""
    if not pieces or not layers:
        return None, {}
    values = {f"moe/{piece.name}": piece.value(layers) for piece in pieces}
    total = sum(piece.coefficient * value for piece, value in zip(pieces, values.values(), strict=True))
    return total, values


def load_statistics(tokens_per_expert_LE: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-layer load statistics from counts, each (L,).

    ``max_load``: the most-loaded expert's share over the mean share (1 is balanced); ``maxvio``:
    ``max / mean − 1`` (DeepSeek-V3's MaxVio, Wang et al. 2024, "Auxiliary-Loss-Free Load
    Balancing"); ``cv``: coefficient of variation ``std / mean``; ``dead``: experts that got no token.
    """
    load_LE = tokens_per_expert_LE.float()
    mean_L = load_LE.mean(dim=-1).clamp_min(1e-9)
    max_over_mean_L = load_LE.amax(dim=-1) / mean_L
    return {
        "max_load": max_over_mean_L,
        "maxvio": max_over_mean_L - 1.0,
        "cv": load_LE.std(dim=-1, unbiased=False) / mean_L,
        "dead": (load_LE == 0).sum(dim=-1).float(),
    }


def router_entropy(routing: RouterOutput) -> torch.Tensor:
    """Mean over tokens of the entropy (nats) of the router's normalised scores; ``ln E`` is uniform."""
    probs_TE = routing.scores_TE.detach()
    probs_TE = probs_TE / probs_TE.sum(dim=-1, keepdim=True)
    return -(probs_TE * probs_TE.clamp_min(1e-20).log()).sum(dim=-1).mean()


def telemetry(layers: Sequence[tuple[int, RouterOutput]]) -> dict[str, torch.Tensor]:
    """``moe/...`` metrics: per layer (``moe/layer{i}/maxvio``, ...) and averaged over layers (``moe/maxvio``)."""
    tokens_per_expert_LE = torch.stack([routing.tokens_per_expert_E for _, routing in layers])
    stats = load_statistics(tokens_per_expert_LE)
    stats["dropped_fraction"] = torch.stack(
        [torch.as_tensor(routing.dropped_fraction if routing.dropped_fraction is not None else 0.0,
                         device=tokens_per_expert_LE.device).float() for _, routing in layers]
    )
    stats["router_entropy"] = torch.stack([router_entropy(routing) for _, routing in layers])
    metrics = {}
    for name, per_layer in stats.items():
        metrics[f"moe/{name}"] = per_layer.mean()
        for (index, _), value in zip(layers, per_layer, strict=True):
            metrics[f"moe/layer{index}/{name}"] = value
    return metrics


def step_outputs(layers: Sequence[tuple[int, RouterOutput]]) -> dict[str, Any]:
    """What a step returns for callbacks: the (L, E) counts (no gradient) and the layer indices."""
    return {
        LOAD_KEY: torch.stack([routing.tokens_per_expert_E for _, routing in layers]).detach(),
        LAYERS_KEY: [index for index, _ in layers],
    }
