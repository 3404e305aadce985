"""Generation: the KV-cache loop equals re-running the prefix, seeds reproduce, stop strings and EOS cut."""

from functools import partial

import pytest
import torch

from constellation_kit.errors import ConfigError
from constellation_kit.eval.generation import cut_at_stop, generate
from constellation_kit.eval.sampling import Sampling
from constellation_kit.model import (
    AudioEncoder,
    GroupedQueryAttention,
    MLPProjector,
    MoEFeedForward,
    SwiGLU,
    TimmVisionEncoder,
    Transformer,
)
from constellation_kit.train import LanguageModel, MultimodalLanguageModel

VOCAB, WINDOW = 96, 5
IMAGE_ID, AUDIO_ID = 1, 2


def network_factory(backend: str = "sdpa"):
    """Local layers of a 5-token window beside a global one, grouped-query heads, MoE every other block.

    ``init_std`` 0.3 spreads the logits, so the argmax is never a near-tie that rounding could flip.
    """
    attention = partial(GroupedQueryAttention, n_heads=4, n_kv_heads=2, layer_pattern="LLG", window=WINDOW,
                        local_rope_base=100.0, backend=backend, init_std=0.3)
    moe = partial(MoEFeedForward, num_experts=4, expert_hidden_dim=16)
    return partial(Transformer, d_model=32, n_layers=3, attention=attention, feed_forward=partial(SwiGLU, hidden_dim=64),
                   moe=moe, moe_every=2, init_std=0.3)


def language_model(backend: str = "sdpa", seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    module = LanguageModel(network_factory(backend), VOCAB)
    module.configure_model()
    return module.eval()


def prompts(seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in (7, 3, 11)]


def test_greedy_generation_with_the_cache_equals_generation_without() -> None:
    # 3 to 11 prompt tokens + 14 new ones: every local layer slides past its 5-token window.
    # (SDPA: the backend every CPU run takes; tests/model/test_kv_cache.py holds eager to the same.)
    module = language_model()
    cached = generate(module, prompts(), max_new_tokens=14)
    uncached = generate(module, prompts(), max_new_tokens=14, use_cache=False)
    assert cached == uncached
    assert all(len(row) == 14 for row in cached)
    assert len({tuple(row) for row in cached}) == 3  # a model that says one thing would prove nothing


def test_a_padded_batch_generates_what_each_prompt_does_alone() -> None:
    module = language_model(seed=1)
    together = generate(module, prompts(1), max_new_tokens=9)
    alone = [generate(module, [p], max_new_tokens=9)[0] for p in prompts(1)]
    assert together == alone


def test_media_prompts_generate_the_same_with_and_without_the_cache() -> None:
    torch.manual_seed(2)
    module = MultimodalLanguageModel(
        network=network_factory(), vocab_size=VOCAB,
        vision_encoder=partial(TimmVisionEncoder, num_tokens=4,
                               backbone_kwargs={"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}),
        audio_encoder=partial(AudioEncoder, width=16, n_layers=1, n_heads=2, num_tokens=3),
        vision_projector=partial(MLPProjector, hidden_dim=24),
    )
    module.configure_model()
    with torch.no_grad():  # media embeddings as large as the token embeddings (std 0.3), so they sway the argmax
        for projector in module.projectors.values():
            projector[-1].weight.mul_(30)
    module.eval()
    rows = [[IMAGE_ID] * 4 + [10, 11], [AUDIO_ID] * 3 + [12], [13, 14, 15]]
    media = [{"image": torch.randn(3, 32, 32)}, {"audio": torch.randn(8000)}, {}]
    ids = {"image": IMAGE_ID, "audio": AUDIO_ID}
    cached = generate(module, rows, max_new_tokens=8, media=media, placeholder_ids=ids)
    uncached = generate(module, rows, max_new_tokens=8, media=media, placeholder_ids=ids, use_cache=False)
    assert cached == uncached
    other = generate(module, rows[:1], max_new_tokens=8, media=[{"image": torch.randn(3, 32, 32)}], placeholder_ids=ids)
    assert other[0] != cached[0]  # the picture reaches the model


def test_sampling_with_a_seed_is_reproducible_and_agrees_with_and_without_the_cache() -> None:
    module = language_model(seed=3)
    sampling = Sampling(temperature=1.0, top_k=20, top_p=0.9)

    def run(seed: int, use_cache: bool = True) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return generate(module, prompts(3), max_new_tokens=10, sampling=sampling, generator=generator, use_cache=use_cache)

    first = run(0)
    assert run(0) == first
    assert run(1) != first
    assert run(0, use_cache=False) == first


def test_eos_and_stop_end_a_row_early() -> None:
    module = language_model(seed=4)
    (free,) = generate(module, prompts(4)[:1], max_new_tokens=12)
    (at_eos,) = generate(module, prompts(4)[:1], max_new_tokens=12, eos_id=free[5])
    assert at_eos == free[: free.index(free[5])]  # up to the first EOS, which is left out
    (stopped,) = generate(module, prompts(4)[:1], max_new_tokens=12, stop=lambda ids: len(ids) == 4)
    assert stopped == free[:4]
    assert generate(module, prompts(4), max_new_tokens=0) == [[], [], []]


def test_stop_strings_cut_before_the_earliest_occurrence() -> None:
    assert cut_at_stop("def f():\n    return 1\n\ndef g", ["\n\n", "return"]) == "def f():\n    "
    assert cut_at_stop("abc", ["x"]) == "abc"
    assert cut_at_stop("abcabc", ["ca", "bc"]) == "a"


def test_an_empty_prompt_or_a_negative_length_is_refused() -> None:
    module = language_model()
    with pytest.raises(ConfigError, match="prompt is empty"):
        generate(module, [[5], []], max_new_tokens=3)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(module, [[5]], max_new_tokens=-1)
