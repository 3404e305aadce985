from functools import partial

import torch
from torch import nn

from constellation_kit.model import GroupedQueryAttention, SwiGLU, Transformer


def tiny_transformer(**overrides) -> Transformer:
    kwargs = dict(
        d_model=32,
        n_layers=2,
        attention=partial(GroupedQueryAttention, n_heads=4, n_kv_heads=2),
        feed_forward=partial(SwiGLU, hidden_dim=64),
    )
    return Transformer(100, **{**kwargs, **overrides})


def test_logits_shape_drops_vocab_padding() -> None:
    model = tiny_transformer()
    assert model.token_embedding.num_embeddings == 128  # 100 padded to a multiple of 64
    out = model(torch.randint(0, 100, (2, 7)))
    assert model.logits(out.hidden).shape == (2, 7, 100)


def test_builds_on_meta_then_materialises_through_reset_parameters() -> None:
    with torch.device("meta"):
        model = tiny_transformer()
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert abs(model.token_embedding.weight.std().item() - 0.02) < 0.005
    torch.testing.assert_close(model.blocks[0].attention_norm.weight, torch.ones(32))
    expected = RotaryEmbeddingRef(model.blocks[0].attention.head_dim)
    torch.testing.assert_close(model.blocks[0].attention.rope.inv_freq, expected)
    assert torch.isfinite(model(torch.randint(0, 100, (1, 5))).hidden).all()


def RotaryEmbeddingRef(head_dim: int) -> torch.Tensor:
    return 1.0 / 10_000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)


def test_tied_head_reads_the_embedding_and_survives_to_empty() -> None:
    with torch.device("meta"):
        model = tiny_transformer(tie_embeddings=True)
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.lm_head is None
    assert model.head_weight is model.token_embedding.weight
    hidden = torch.randn(1, 3, 32)
    torch.testing.assert_close(model.logits(hidden), hidden @ model.token_embedding.weight[:100].T)


def test_future_tokens_do_not_change_past_logits() -> None:
    torch.manual_seed(0)
    model = tiny_transformer()
    tokens = torch.randint(0, 100, (1, 10))
    changed = tokens.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 100
    torch.testing.assert_close(model(tokens).hidden[:, :6], model(changed).hidden[:, :6])


class CountingFeedForward(nn.Module):
    """A sublayer that reports a statistic alongside its output, like an MoE router would."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self.proj(x), x.shape[0] * x.shape[1]


def test_sublayer_aux_values_are_returned_per_layer() -> None:
    model = tiny_transformer(feed_forward=CountingFeedForward, n_layers=3)
    out = model(torch.randint(0, 100, (2, 5)))
    assert out.aux == [(0, 10), (1, 10), (2, 10)]
