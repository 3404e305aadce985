import math

import pytest
import torch

from constellation_kit.errors import ConfigError
from constellation_kit.model import GroupedQueryAttention, RotaryEmbedding, SequenceLayout


def reference_attention(attn: GroupedQueryAttention, x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """Slow, obviously-correct attention: explicit KV-head repetition, masks and softmax."""
    batch, seq_len, _ = x.shape
    h, hkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(batch, seq_len, h, hd).transpose(1, 2)
    kv = attn.kv_proj(x).view(batch, seq_len, 2, hkv, hd)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    cos, sin = attn.rope(layout.positions)
    q, k = RotaryEmbedding.rotate(q, cos, sin), RotaryEmbedding.rotate(k, cos, sin)
    k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    allowed = torch.zeros(batch, 1, seq_len, seq_len, dtype=torch.bool)
    for b in range(batch):
        for i in range(seq_len):
            for j in range(i + 1):
                allowed[b, 0, i, j] = layout.document_ids[b, i] == layout.document_ids[b, j]
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return attn.out_proj((weights @ v).transpose(1, 2).reshape(batch, seq_len, h * hd))


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
@pytest.mark.parametrize("packed", [False, True])
def test_matches_reference_for_every_grouping(n_kv_heads: int, packed: bool) -> None:
    torch.manual_seed(0)
    attn = GroupedQueryAttention(32, n_heads=4, n_kv_heads=n_kv_heads)
    x = torch.randn(2, 12, 32)
    documents = torch.tensor([[0] * 5 + [1] * 7, [0] * 3 + [1] * 3 + [2] * 6]) if packed else torch.zeros(2, 12, dtype=torch.long)
    layout = SequenceLayout.from_document_ids(documents)
    torch.testing.assert_close(attn(x, layout), reference_attention(attn, x, layout), rtol=1e-5, atol=1e-6)


def test_packed_sequence_equals_each_document_alone() -> None:
    torch.manual_seed(0)
    attn = GroupedQueryAttention(32, n_heads=4, n_kv_heads=2)
    a, b = torch.randn(1, 5, 32), torch.randn(1, 7, 32)
    packed = attn(torch.cat([a, b], dim=1), SequenceLayout.from_document_ids(torch.tensor([[0] * 5 + [1] * 7])))
    alone_a = attn(a, SequenceLayout.single_document(1, 5, a.device))
    alone_b = attn(b, SequenceLayout.single_document(1, 7, b.device))
    torch.testing.assert_close(packed, torch.cat([alone_a, alone_b], dim=1), rtol=1e-5, atol=1e-6)


def test_is_causal() -> None:
    torch.manual_seed(0)
    attn = GroupedQueryAttention(16, n_heads=2)
    x = torch.randn(1, 8, 16)
    layout = SequenceLayout.single_document(1, 8, x.device)
    changed = x.clone()
    changed[:, 5:] += 1.0
    torch.testing.assert_close(attn(x, layout)[:, :5], attn(changed, layout)[:, :5])
    assert not torch.allclose(attn(x, layout)[:, 5:], attn(changed, layout)[:, 5:])


def test_d_model_not_divisible_by_heads_names_both_numbers() -> None:
    with pytest.raises(ConfigError, match=r"d_model=130 is not divisible by n_heads=4"):
        GroupedQueryAttention(130, n_heads=4)


def test_heads_not_divisible_by_kv_heads() -> None:
    with pytest.raises(ConfigError, match=r"n_heads=6 is not divisible by n_kv_heads=4"):
        GroupedQueryAttention(48, n_heads=6, n_kv_heads=4)


def test_explicit_head_dim_allows_any_width() -> None:
    attn = GroupedQueryAttention(130, n_heads=4, head_dim=32)
    x = torch.randn(1, 3, 130)
    assert attn(x, SequenceLayout.single_document(1, 3, x.device)).shape == (1, 3, 130)
