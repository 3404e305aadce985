"""Built-in reasoning suites: multi-hop variable tracking (multiple choice) and small arithmetic (exact match)."""

import random
import string

from constellation_kit.errors import ConfigError
from constellation_kit.eval.retrieval_suites import _shuffled
from constellation_kit.eval.task import EvalSuite, GenerationItem, Task, multiple_choice_chance


class VariableTrackingSuite(EvalSuite):
    """Multi-hop variable tracking (RULER's, in Python): follow ``hops`` assignments back to a number.

    ``num_chains`` chains ``a = 41``, ``b = a``, ``c = b`` ... are interleaved (each line after the
    one it reads); the item asks ``assert <last name of chain 0> ==`` with the chains' numbers as
    the choices. Chance ``1 / num_chains``.

    Args:
        hops: assignments after the first in each chain.
        num_chains: chains, i.e. choices (2 to 26).
        num_items: items.
        seed: the draw.
    """

    def __init__(self, hops: int = 3, num_chains: int = 4, num_items: int = 100, seed: int = 0) -> None:
        if not 2 <= num_chains <= 26 or hops < 1:
            raise ConfigError(f"VariableTrackingSuite needs 2..26 chains and at least one hop, got {num_chains}, {hops}")
        self.hops, self.num_chains, self.num_items, self.seed = hops, num_chains, num_items, seed

    @property
    def name(self) -> str:
        return "variable_tracking"

    def build(self, datamodule=None) -> Task:
        rng = random.Random(self.seed)
        items = []
        for _ in range(self.num_items):
            names = rng.sample([a + b for a in string.ascii_lowercase for b in "0123456789"], self.num_chains * (self.hops + 1))
            values = rng.sample(range(10, 100), self.num_chains)
            chains = [names[c * (self.hops + 1):(c + 1) * (self.hops + 1)] for c in range(self.num_chains)]
            lines = {c: [f"{chain[0]} = {values[c]}"] + [f"{chain[h]} = {chain[h - 1]}" for h in range(1, self.hops + 1)]
                     for c, chain in enumerate(chains)}
            program = []
            while any(lines.values()):  # a random interleaving that keeps each chain in order
                c = rng.choice([c for c, rest in lines.items() if rest])
                program.append(lines[c].pop(0))
            context = "\n".join(program) + f"\nassert {chains[0][-1]} =="
            items.append(_shuffled(context, str(values[0]), [str(v) for v in values[1:]], rng))
        return Task(self.name, items, multiple_choice_chance(items), f"{self.hops}-hop assignments, {self.num_chains} chains")


class ArithmeticSuite(EvalSuite):
    """Small arithmetic, generated and scored by exact match: ``"3 + 4 ="`` -> ``"7"``.

    Sums of two numbers in ``0 .. max_operand``; chance is ``1 / (2 * max_operand + 1)``, a uniform
    guess among the possible sums.

    Args:
        max_operand: the largest operand.
        num_items: items.
        seed: the draw.
    """

    def __init__(self, max_operand: int = 9, num_items: int = 100, seed: int = 0) -> None:
        if max_operand < 1:
            raise ConfigError(f"ArithmeticSuite max_operand={max_operand} must be at least 1")
        self.max_operand, self.num_items, self.seed = max_operand, num_items, seed

    @property
    def name(self) -> str:
        return "arithmetic"

    def build(self, datamodule=None) -> Task:
        rng = random.Random(self.seed)
        items = []
        for _ in range(self.num_items):
            a, b = rng.randint(0, self.max_operand), rng.randint(0, self.max_operand)
            items.append(GenerationItem(f"{a} + {b} =", str(a + b), stop=("\n", " +", ","), max_new_tokens=4))
        return Task(self.name, items, 1 / (2 * self.max_operand + 1), f"a + b with operands up to {self.max_operand}")
