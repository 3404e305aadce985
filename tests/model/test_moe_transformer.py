"""MoE blocks inside the transformer: which blocks are MoE, aux collection, meta-device init."""

import functools

import pytest
import torch

from constellation_kit.errors import ConfigError
from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, RouterOutput, SwiGLU, Transformer

ATTENTION = functools.partial(GroupedQueryAttention, n_heads=4)


def build(**kwargs) -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        64, d_model=32, n_layers=4, attention=ATTENTION, moe=functools.partial(MoEFeedForward, num_experts=4, expert_hidden_dim=16), **kwargs
    )


@pytest.mark.parametrize("moe_every,expected", [(1, [0, 1, 2, 3]), (2, [1, 3]), (4, [3])])
def test_moe_every_picks_the_blocks_and_each_returns_its_routing(moe_every: int, expected: list[int]) -> None:
    model = build(moe_every=moe_every)
    moe_blocks = [b.layer_index for b in model.blocks if isinstance(b.feed_forward, MoEFeedForward)]
    assert moe_blocks == expected
    assert all(isinstance(b.feed_forward, SwiGLU) for b in model.blocks if b.layer_index not in expected)
    out = model(torch.randint(0, 64, (2, 5)))
    assert [index for index, _ in out.aux] == expected
    assert all(isinstance(r, RouterOutput) and r.tokens_per_expert_E.sum() == 2 * 5 * 2 for _, r in out.aux)


def test_no_moe_factory_means_all_dense() -> None:
    model = Transformer(64, d_model=32, n_layers=2, attention=ATTENTION)
    assert model(torch.randint(0, 64, (1, 3))).aux == []


def test_bad_moe_every_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="moe_every=0"):
        build(moe_every=0)


def test_meta_construction_then_init_weights_matches_a_direct_build() -> None:
    """Same seed, same numbers: init_weights() must draw every parameter exactly as construction does.

    Exact equality, not shapes: a module that init_weights() skips keeps to_empty()'s garbage, and
    one re-initialised in another order or with another law gets other numbers; both fail here.
    """
    direct = build(moe_every=2)
    with torch.device("meta"):
        meta = build(moe_every=2)
    meta.to_empty(device="cpu")
    torch.manual_seed(0)
    meta.init_weights()
    for (name, p), (direct_name, q) in zip(meta.named_parameters(), direct.named_parameters(), strict=True):
        assert name == direct_name and torch.equal(p, q), name
    # Buffers too: RoPE's inverse frequencies are recomputed, the router biases zeroed.
    for (name, b), (_, c) in zip(meta.named_buffers(), direct.named_buffers(), strict=True):
        assert torch.equal(b, c), name
    assert any(name.endswith("expert_bias") for name, _ in meta.named_buffers())
