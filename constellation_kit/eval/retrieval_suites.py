"""Built-in retrieval suites in words: multi-query associative recall and passkey retrieval.

Both reuse the kit's token-level generators (:mod:`constellation_kit.data.long_range_tasks`) for
what to ask, and render their draws as text any tokenizer reads, so a checkpoint trained on text
is scored with its own tokenizer. Four choices each: chance is 1/4.
"""

import random
import string

import numpy as np

from constellation_kit.data import IGNORE_INDEX, MultiQueryAssociativeRecall, PasskeyRetrieval
from constellation_kit.errors import ConfigError
from constellation_kit.eval.task import EvalSuite, MultipleChoiceItem, Task, multiple_choice_chance

KEY_NAMES = [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
"""Keys render as two-letter names ("ab"), values as numbers."""
FILLER_WORDS = ["the", "grass", "is", "green", "sky", "blue", "sun", "yellow", "here", "we", "go",
                "there", "and", "back", "again", "today"]
"""The passkey filler, after Mohtashami & Jaggi's "The grass is green. The sky is blue. ..."."""


class MQARSuite(EvalSuite):
    """Multi-query associative recall (Zoology's MQAR) as text: ``"ab 12 cd 47 ef 3 . cd 47 ab"`` -> ``" 12"``.

    ``num_kv_pairs`` key-value pairs, then the keys queried in the generator's order, the earlier
    queries answered; the item asks one query (a random one). The choices are the true value and
    three other values of the same sequence (so how often a number appears gives nothing away).
    Chance 1/4.

    Args:
        num_items: items (one per generated sequence).
        num_kv_pairs: pairs per sequence (at least 4, for three distractors).
        seed: the draw.
    """

    def __init__(self, num_items: int = 100, num_kv_pairs: int = 8, seed: int = 0) -> None:
        if num_kv_pairs < 4:
            raise ConfigError(f"MQARSuite num_kv_pairs={num_kv_pairs} must be at least 4 (the answer and three distractors)")
        self.num_items, self.num_kv_pairs, self.seed = num_items, num_kv_pairs, seed

    @property
    def name(self) -> str:
        return "mqar"

    def build(self, datamodule=None) -> Task:
        k = self.num_kv_pairs
        vocab = 2 * 64  # keys 1..63, values 64..127
        inputs, targets = MultiQueryAssociativeRecall(vocab, k, random_non_queries=False).generate(
            self.num_items, 4 * k, self.seed)
        rng = random.Random(self.seed)
        items = []
        for row, labels in zip(inputs, targets):
            keys, values = row[0:2 * k:2], row[1:2 * k:2]
            value_of = dict(zip(keys.tolist(), values.tolist()))
            asked = [int(row[p]) for p in np.flatnonzero(labels != IGNORE_INDEX)]  # keys in query order
            j = rng.randrange(k)
            pairs = " ".join(f"{KEY_NAMES[key]} {value_of[key] - 64}" for key in keys.tolist())
            answered = " ".join(f"{KEY_NAMES[key]} {value_of[key] - 64}" for key in asked[:j])
            context = f"{pairs} . {answered} {KEY_NAMES[asked[j]]}".replace("  ", " ")
            true = value_of[asked[j]] - 64
            others = rng.sample([v - 64 for v in values.tolist() if v - 64 != true], 3)
            items.append(_shuffled(context, str(true), [str(o) for o in others], rng))
        return Task(self.name, items, multiple_choice_chance(items), "key-value recall after one listing")


class PasskeySuite(EvalSuite):
    """Passkey retrieval as text at ``length`` filler words: find the 5-digit key hidden at a random depth.

    ``"... the pass key is 40213 . remember it . ... what is the pass key ? the pass key is"`` ->
    ``" 40213"`` among three other random keys. Chance 1/4. Named ``passkey_<length>``, so several
    lengths log side by side.

    Args:
        length: filler words around the key (the context is about that many tokens, plus 20).
        num_items: items.
        seed: the draw.
    """

    def __init__(self, length: int = 256, num_items: int = 50, seed: int = 0) -> None:
        if length < 16:
            raise ConfigError(f"PasskeySuite length={length} must be at least 16 filler words")
        self.length, self.num_items, self.seed = length, num_items, seed

    @property
    def name(self) -> str:
        return f"passkey_{self.length}"

    def build(self, datamodule=None) -> Task:
        task = PasskeyRetrieval(vocab_size=PasskeyRetrieval.FIRST_FILLER + len(FILLER_WORDS), passkey_digits=5)
        inputs, _ = task.generate(self.num_items, self.length, self.seed)
        rng = random.Random(self.seed)
        items = []
        for row in inputs.tolist():
            words, key, inside = [], "", False
            for token in row:
                if token == task.QUERY:
                    break
                if token == task.MARK:
                    inside = not inside
                    if not inside:
                        words += ["the", "pass", "key", "is", key, ".", "remember", "it", "."]
                elif inside:
                    key += str(token)
                else:
                    words.append(FILLER_WORDS[token - task.FIRST_FILLER])
            context = " ".join(words) + " . what is the pass key ? the pass key is"
            others = {f"{rng.randrange(10**5):05d}" for _ in range(6)} - {key}
            items.append(_shuffled(context, key, sorted(others)[:3], rng))
        return Task(self.name, items, multiple_choice_chance(items), f"a 5-digit key among {self.length} filler words")


def _shuffled(context: str, true: str, others: list[str], rng: random.Random) -> MultipleChoiceItem:
    """A multiple-choice item with the true choice at a random position."""
    answer = rng.randrange(len(others) + 1)
    choices = others[:answer] + [true] + others[answer:]
    return MultipleChoiceItem(context, tuple(choices), answer)
