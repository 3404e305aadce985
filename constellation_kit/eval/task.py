"""Task formats: what an evaluation item is, and what a task (a named list of items) states about itself.

Two kinds of item, with the lm-evaluation-harness's semantics:

- :class:`MultipleChoiceItem`: the model scores each choice as a continuation of the context by its
  summed log-likelihood; ``acc`` counts the argmax, ``acc_norm`` the argmax of the log-likelihood
  divided by the choice's length in characters (``lm_eval.api.task.ConfigurableTask.process_results``).
  An item may carry an image or audio file (:class:`MediaRef`), whose encoder tokens come first.
- :class:`GenerationItem`: the model continues the prompt greedily; ``exact_match`` compares the text
  before the first stop string, stripped of surrounding whitespace, with the answer.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from constellation_kit.errors import ConfigError


@dataclass(frozen=True)
class MediaRef:
    """An image or audio file that precedes an item's context: its encoder's tokens come first."""

    modality: str
    """``"image"`` or ``"audio"``."""
    path: str
    """Absolute path of the file."""


@dataclass(frozen=True)
class MultipleChoiceItem:
    """A context and its candidate continuations, ``answer`` indexing the right one.

    Choice ``k`` is scored as the continuation ``delimiter + choices[k]`` of ``context`` (the harness's
    ``target_delimiter``, a space by default); ``acc_norm`` divides by ``len(choices[k])``, as the
    harness does (the delimiter not counted).
    """

    context: str
    choices: tuple[str, ...]
    answer: int
    delimiter: str = " "
    media: MediaRef | None = None

    def __post_init__(self) -> None:
        if len(self.choices) < 2 or not 0 <= self.answer < len(self.choices):
            raise ConfigError(f"a multiple-choice item needs at least two choices and an answer index among them, "
                              f"got {len(self.choices)} choices and answer={self.answer} (context {self.context[:60]!r})")


@dataclass(frozen=True)
class GenerationItem:
    """A prompt the model continues greedily, right when the continuation matches ``answer`` exactly."""

    prompt: str
    answer: str
    stop: tuple[str, ...] = ("\n",)
    max_new_tokens: int = 16


Item = MultipleChoiceItem | GenerationItem


@dataclass
class Task:
    """A named list of items of one kind, and the score a guess would get.

    ``chance`` is the expected ``acc`` of a uniform guess: the mean of ``1 / len(choices)`` for
    multiple choice; for generation, what the task states (``1 / the number of possible answers``).
    """

    name: str
    items: list[Item]
    chance: float | None
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.items:
            raise ConfigError(f"task {self.name!r} has no items")
        kinds = {type(item) for item in self.items}
        if len(kinds) > 1:
            raise ConfigError(f"task {self.name!r} mixes multiple-choice and generation items: split it in two tasks")

    @property
    def kind(self) -> str:
        """``"multiple_choice"`` or ``"generation"``."""
        return "multiple_choice" if isinstance(self.items[0], MultipleChoiceItem) else "generation"

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("acc", "acc_norm") if self.kind == "multiple_choice" else ("exact_match",)

    def limited(self, limit: int | None) -> "Task":
        """The first ``limit`` items (all when ``None``)."""
        if limit is None or limit >= len(self.items):
            return self
        return Task(self.name, self.items[:limit], multiple_choice_chance(self.items[:limit]) if
                    self.kind == "multiple_choice" else self.chance, self.description, self.metadata)


def multiple_choice_chance(items: list[Item]) -> float:
    """Expected accuracy of a uniform guess: mean over items of ``1 / len(choices)``."""
    return sum(1 / len(item.choices) for item in items) / len(items)


class EvalSuite(ABC):
    """A source of one :class:`Task`: a built-in generator, a JSONL file, the run's grounding questions.

    Recipes name suites by ``class_path`` in :class:`~constellation_kit.eval.ValidationSuites`;
    ``constellation-kit eval --tasks`` names them by :attr:`name`.
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """The task's name, as logged (``val/<name>/acc``)."""

    @abstractmethod
    def build(self, datamodule: Any = None) -> Task:
        """The task's items. ``datamodule`` is the run's (set up); only suites over its data need it."""
