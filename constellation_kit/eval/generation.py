"""Text generation from a trained model (a minimal placeholder: uncached greedy decoding).

The generation work (KV cache, sampling, media prompts) replaces this file; the signature is the
shared contract the evaluation code calls.
"""

from typing import TYPE_CHECKING

from constellation_kit.errors import ConfigError

if TYPE_CHECKING:
    from constellation_kit.trained_model import TrainedModel


def generate_text(trained: "TrainedModel", prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None, stop: list[str] | None = None,
                  images: list[str | None] | None = None, audio: list[str | None] | None = None,
                  seed: int | None = None) -> list[str]:
    """The continuation of each prompt (stop strings excluded), greedy, without a cache."""
    from constellation_kit.eval.scoring import Scorer, cut_at_stop

    if temperature != 0.0 or any(x for x in (images or [])) or any(x for x in (audio or [])):
        raise ConfigError("this build generates greedily from text prompts only (temperature 0, no media)")
    scorer = Scorer(trained.module, trained.tokenizer, trained.datamodule)
    ids = [trained.tokenizer.encode(p, add_special_tokens=False).ids or [scorer.eos_id] for p in prompts]
    texts = [trained.tokenizer.decode(out) for out in scorer.greedy(ids, max_new_tokens)]
    return [cut_at_stop(text, stop or []) for text in texts]
