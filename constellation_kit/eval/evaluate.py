"""Scoring whole tasks: each item's scores from a :class:`Scorer`, and the task's means beside its chance level."""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from constellation_kit.eval.scoring import Request, Scorer, exact_match, multiple_choice_scores
from constellation_kit.eval.task import Item, MultipleChoiceItem, Task

Generate = Callable[[list[str], int, tuple[str, ...]], list[str]]
"""``generate(prompts, max_new_tokens, stop) -> continuations``: greedy text after each prompt."""


@dataclass
class TaskResult:
    """One task's scores: the mean of each metric over ``num_items`` items, and the chance level."""

    name: str
    kind: str
    num_items: int
    metrics: dict[str, float]
    chance: float | None
    source: str = "builtin"

    def to_dict(self) -> dict:
        return asdict(self)


def item_scores(scorer: Scorer, items: Sequence[Item], generate: Generate, progress: bool = False,
                pad_requests_to: int | None = None, max_new_tokens: int | None = None) -> dict[str, list[float]]:
    """Each item's scores by metric (``acc``/``acc_norm``, or ``exact_match``), in item order.

    ``pad_requests_to`` repeats the first request until there are that many (results discarded) and
    ``max_new_tokens`` sets one generation length for all items: with both, the number of forward
    calls is the same for every list of items, as FSDP2 needs on every rank.
    """
    if not items:
        return {}
    if isinstance(items[0], MultipleChoiceItem):
        requests: list[Request] = [r for item in items for r in scorer.multiple_choice_requests(item)]
        real = len(requests)
        requests += [requests[0]] * max(0, (pad_requests_to or 0) - real)
        lls = [ll for ll, _ in scorer.loglikelihoods(requests, progress=progress)[:real]]
        scores: dict[str, list[float]] = {"acc": [], "acc_norm": []}
        start = 0
        for item in items:
            per_item = multiple_choice_scores(item, lls[start:start + len(item.choices)])
            start += len(item.choices)
            for metric, value in per_item.items():
                scores[metric].append(value)
        return scores
    prompts = [item.prompt for item in items]
    prompts += [prompts[0]] * max(0, (pad_requests_to or 0) - len(prompts))
    if max_new_tokens is not None:
        stops = tuple(sorted({s for item in items for s in item.stop}))
        generated = generate(prompts, max_new_tokens, stops)
    else:
        generated = [""] * len(items)
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((item.max_new_tokens, item.stop), []).append(i)
        for (length, stop), indices in groups.items():
            for i, text in zip(indices, generate([prompts[i] for i in indices], length, stop)):
                generated[i] = text
    return {"exact_match": [exact_match(item, text) for item, text in zip(items, generated)]}


def greedy_generate(scorer: Scorer) -> Generate:
    """:data:`Generate` through :meth:`Scorer.greedy`: a fixed number of uncached forwards (FSDP2-safe)."""
    def generate(prompts: list[str], max_new_tokens: int, stop: tuple[str, ...]) -> list[str]:
        ids = [scorer.tokenizer.encode(p, add_special_tokens=False).ids or [scorer.eos_id] for p in prompts]
        return [scorer.tokenizer.decode(out) for out in scorer.greedy(ids, max_new_tokens)]
    return generate


def evaluate_task(scorer: Scorer, task: Task, generate: Generate, progress: bool = False) -> TaskResult:
    """All of ``task``'s items scored on this process; the means by metric."""
    scores = item_scores(scorer, task.items, generate, progress=progress)
    metrics = {metric: sum(values) / len(values) for metric, values in scores.items()}
    return TaskResult(task.name, task.kind, len(task.items), metrics, task.chance)
