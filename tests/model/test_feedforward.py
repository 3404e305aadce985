import torch
import torch.nn.functional as F

from constellation_kit.model import SwiGLU


def test_swiglu_matches_formula() -> None:
    ff = SwiGLU(8, hidden_dim=12)
    x = torch.randn(2, 3, 8)
    w_gate, w_up = ff.gate_up_proj.weight[:12], ff.gate_up_proj.weight[12:]
    expected = (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ ff.down_proj.weight.T
    torch.testing.assert_close(ff(x), expected)


def test_default_hidden_dim_is_eight_thirds_rounded_up() -> None:
    assert SwiGLU(96, multiple_of=64).hidden_dim == 256  # 8/3 * 96 = 256
    assert SwiGLU(100, multiple_of=64).hidden_dim == 320  # 266 -> next multiple of 64
