"""Built-in copying (induction) suite: continue a sequence of words the context has already shown once."""

import random

from constellation_kit.errors import ConfigError
from constellation_kit.eval.retrieval_suites import _shuffled
from constellation_kit.eval.task import EvalSuite, Task, multiple_choice_chance

WORDS = ["apple", "river", "stone", "cloud", "table", "green", "light", "house", "music", "paper", "glass",
         "tiger", "bread", "chair", "plant", "smile", "train", "water", "night", "sugar", "horse", "clock",
         "beach", "dream", "piano", "honey", "storm", "queen", "lemon", "shirt", "radio", "snake"]


class CopyingSuite(EvalSuite):
    """Induction: ``length`` random words, then the first ``prefix`` of them again; which word comes next?

    The choices are the next word and three other words of the sequence. A model that copies (an
    induction head: find the earlier occurrence, read what followed) gets it; chance is 1/4.

    Args:
        length: words in the sequence (at most 32, all distinct).
        num_items: items.
        seed: the draw.
    """

    def __init__(self, length: int = 16, num_items: int = 100, seed: int = 0) -> None:
        if not 5 <= length <= len(WORDS):
            raise ConfigError(f"CopyingSuite length={length} must be between 5 and {len(WORDS)}")
        self.length, self.num_items, self.seed = length, num_items, seed

    @property
    def name(self) -> str:
        return "copying"

    def build(self, datamodule=None) -> Task:
        rng = random.Random(self.seed)
        items = []
        for _ in range(self.num_items):
            words = rng.sample(WORDS, self.length)
            prefix = rng.randint(2, self.length - 2)
            context = " ".join(words) + " . " + " ".join(words[:prefix])
            others = rng.sample([w for w in words if w != words[prefix]], 3)
            items.append(_shuffled(context, words[prefix], others, rng))
        return Task(self.name, items, multiple_choice_chance(items), f"repeat {self.length} words")
