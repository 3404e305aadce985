from functools import partial

import pytest
import torch
from lightning.fabric.utilities.init import _materialize_distributed_module

from constellation_kit.model import GroupedQueryAttention, SwiGLU, Transformer
from constellation_kit.model.layers import Embedding, Linear


def meta_transformer() -> Transformer:
    with torch.device("meta"):
        return Transformer(
            512,
            d_model=64,
            n_layers=2,
            attention=partial(GroupedQueryAttention, n_heads=4, n_kv_heads=2, init_std=0.02),
            feed_forward=partial(SwiGLU, hidden_dim=128, init_std=0.02),
            init_std=0.02,
        )


def materialise_children_first(model: Transformer) -> None:
    model.to_empty(device="cpu")
    for module in reversed(list(model.modules())):
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()


@pytest.mark.parametrize(
    "materialise",
    [
        lambda m: _materialize_distributed_module(m, torch.device("cpu")),  # Lightning: parents first
        materialise_children_first,
        lambda m: (m.to_empty(device="cpu"), m.init_weights()),
    ],
    ids=["lightning-parents-first", "children-first", "init_weights"],
)
def test_initialisation_does_not_depend_on_order(materialise) -> None:
    torch.manual_seed(0)
    model = meta_transformer()
    materialise(model)
    for name, param in model.named_parameters():
        if param.ndim == 2:
            assert param.std().item() == pytest.approx(0.02, rel=0.15), name
        else:
            assert torch.equal(param, torch.ones_like(param)), name  # RMSNorm gains


def test_layers_initialise_themselves() -> None:
    assert Linear(256, 256, init_std=0.5).weight.std().item() == pytest.approx(0.5, rel=0.05)
    assert Embedding(1000, 64, init_std=0.1).weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert Linear(4, 4, bias=True).bias.abs().sum() == 0
