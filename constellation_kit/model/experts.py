"""Routed SwiGLU experts, stored stacked so one grouped matmul runs them all.

Shape legend: ``E`` experts, ``D`` model width, ``H`` expert hidden width, ``N`` token copies
sorted by expert. Weights are stored "in × out" with experts on the first dimension, the layout
``torch._grouped_mm(x_ND, w_EDH, offsets_E)`` multiplies without a transpose.
"""

import torch
from torch import nn

from constellation_kit.errors import ConfigError


class SwiGLUExperts(nn.Module):
    """``E`` independent SwiGLU experts: expert ``e`` maps rows (n, D) -> (n, D) as
    ``(silu(x G_e) * (x U_e)) W_e``.

    ``gate_up_proj`` (E, D, 2H) holds ``[G_e | U_e]`` (gate then up, fused as in the dense
    :class:`~constellation_kit.model.SwiGLU`); ``down_proj`` (E, H, D) holds ``W_e``. Which rows go
    to which expert is the dispatcher's business (:mod:`constellation_kit.model.dispatch`); this
    module only owns the weights. Fine-grained experts (DeepSeekMoE, OLMoE) are just a larger
    ``E`` with a smaller ``H``.

    Args:
        d_model: model width.
        num_experts: ``E``.
        hidden_dim: ``H``, each expert's inner width.
        init_std: standard deviation of the normal initialisation.
    """

    def __init__(self, d_model: int, num_experts: int, hidden_dim: int, *, init_std: float = 0.02) -> None:
        super().__init__()
        if num_experts < 1 or hidden_dim < 1:
            raise ConfigError(f"num_experts={num_experts} and expert hidden_dim={hidden_dim} must be positive")
        self.num_experts = num_experts
        self.hidden_dim = hidden_dim
        self.init_std = init_std
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, d_model, 2 * hidden_dim))  # (E, D, 2H)
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_dim, d_model))  # (E, H, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.gate_up_proj, std=self.init_std)
        nn.init.normal_(self.down_proj, std=self.init_std)

    def expert_forward(self, x_nD: torch.Tensor, expert: int) -> torch.Tensor:
        """One expert on its rows, (n, D) -> (n, D): the obviously-correct form the reference loop uses."""
        gate_nH, up_nH = (x_nD @ self.gate_up_proj[expert]).chunk(2, dim=-1)
        return (nn.functional.silu(gate_nH) * up_nH) @ self.down_proj[expert]
