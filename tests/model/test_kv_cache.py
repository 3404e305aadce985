"""The KV cache: a step over new tokens against the cache computes what a full forward over the prefix does."""

from functools import partial

import pytest
import torch

from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, SwiGLU, Transformer
from constellation_kit.model.kv_cache import KVCache

WINDOW = 4


def local_global_network(backend: str, seed: int = 0) -> Transformer:
    """Local layers (window 4) and a global one, grouped-query heads, QK-norm, MoE every other block."""
    torch.manual_seed(seed)
    attention = partial(
        GroupedQueryAttention, n_heads=4, n_kv_heads=2, layer_pattern="LLG", window=WINDOW, qk_norm=True,
        local_rope_base=100.0, backend=backend,
    )
    moe = partial(MoEFeedForward, num_experts=4, expert_hidden_dim=16)
    return Transformer(100, d_model=32, n_layers=4, attention=attention, feed_forward=partial(SwiGLU, hidden_dim=64),
                       moe=moe, moe_every=2).eval()


def full_logits(network: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    return network.logits(network(tokens).hidden)


def cached_logits(network: Transformer, tokens: torch.Tensor, prompt: int) -> tuple[torch.Tensor, KVCache]:
    """The prompt in one step, then one token per step: logits (B, T, V) from the cached steps."""
    cache = KVCache()
    steps = [network.logits(network(tokens[:, :prompt], cache=cache).hidden)]
    for t in range(prompt, tokens.shape[1]):
        steps.append(network.logits(network(tokens[:, t : t + 1], cache=cache).hidden))
    return torch.cat(steps, dim=1), cache


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_cached_steps_equal_the_full_forward_across_window_boundaries(backend: str) -> None:
    network = local_global_network(backend)
    tokens = torch.randint(0, 100, (2, 19))  # 19 tokens: local layers slide past their 4-token window 15 times
    with torch.no_grad():
        expected = full_logits(network, tokens)
        got, cache = cached_logits(network, tokens, prompt=6)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # A local layer keeps only what a later query can see (W - 1 keys); the global layer keeps all.
    assert [cache.cached_tokens(i) for i in range(4)] == [WINDOW - 1, WINDOW - 1, 19, WINDOW - 1]
    # Keys are cached per key/value head (2), not repeated for the 4 query heads.
    assert all(layer.keys.shape[:2] == (2, 2) and layer.values.shape == layer.keys.shape for layer in cache.layers.values())


def test_a_local_layer_forgets_what_falls_out_of_its_window() -> None:
    # Changing a token the window has passed changes the global layers' output, never the local ones':
    # a cache that kept (or dropped) the wrong keys would show here.
    attention = partial(GroupedQueryAttention, n_heads=2, n_kv_heads=1, layer_pattern="L", window=WINDOW, backend="sdpa")
    torch.manual_seed(1)
    network = Transformer(50, d_model=16, n_layers=1, attention=attention, feed_forward=partial(SwiGLU, hidden_dim=32)).eval()
    tokens = torch.randint(0, 50, (1, 12))
    changed = tokens.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 50
    with torch.no_grad():
        before, _ = cached_logits(network, tokens, prompt=3)
        after, _ = cached_logits(network, changed, prompt=3)
    # Queries at positions >= 2 + W no longer see position 2.
    torch.testing.assert_close(before[:, 2 + WINDOW :], after[:, 2 + WINDOW :], rtol=0, atol=0)
    assert not torch.allclose(before[:, 2 : 2 + WINDOW], after[:, 2 : 2 + WINDOW])


def test_left_padded_rows_compute_what_each_row_does_alone() -> None:
    network = local_global_network("sdpa", seed=2)
    short, long = torch.randint(0, 100, (1, 5)), torch.randint(0, 100, (1, 9))
    pad = long.shape[1] - short.shape[1]
    prompts = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), short], 1), long])  # (2, 9)
    valid = torch.ones_like(prompts, dtype=torch.bool)
    valid[0, :pad] = False
    following = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        cache = KVCache()
        steps = [network.logits(network(prompts, cache.extend(valid), cache=cache).hidden)[:, -1:]]
        for t in range(following.shape[1]):
            steps.append(network.logits(network(following[:, t : t + 1], cache=cache).hidden))
        batched = torch.cat(steps, dim=1)  # (2, 7, V): the prompt's last token, then each following one
        for row, prompt in enumerate((short, long)):
            alone = full_logits(network, torch.cat([prompt, following[row : row + 1]], 1))[:, prompt.shape[1] - 1 :]
            torch.testing.assert_close(batched[row : row + 1], alone, rtol=0, atol=1e-5)
    # Positions count real tokens: the padded row continues from 5, not from 9.
    assert cache.lengths.tolist() == [5 + 6, 9 + 6]


def test_the_decoding_mask_is_the_training_rule() -> None:
    # Brute force over positions: a real key at or before the query, within the window.
    queries = torch.tensor([[7, 8]])
    keys = torch.tensor([[-1, 3, 4, 5, 6, 7, 8]])
    mask = KVCache.mask(queries, keys, window=3)[0, 0]
    expected = [[k >= 0 and k <= q and q - k < 3 for k in keys[0].tolist()] for q in queries[0].tolist()]
    assert mask.tolist() == expected
    assert KVCache.mask(queries, keys, window=None)[0, 0].tolist() == [
        [k >= 0 and k <= q for k in keys[0].tolist()] for q in queries[0].tolist()
    ]


def test_attend_without_extend_for_its_tokens_is_refused() -> None:
    attention = GroupedQueryAttention(16, n_heads=2)
    cache = KVCache()
    with pytest.raises(RuntimeError, match="extend"):
        cache.attend(0, None, None, *attention.project(torch.randn(1, 2, 16), _layout(2)), _layout(2))
    cache.extend(torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="last called for \\(1, 3\\) tokens, this step has \\(1, 2\\)"):
        cache.attend(0, None, None, *attention.project(torch.randn(1, 2, 16), _layout(2)), _layout(2))


def _layout(seq_len: int):
    from constellation_kit.model.layout import SequenceLayout

    return SequenceLayout.single_document(1, seq_len, torch.device("cpu"))
