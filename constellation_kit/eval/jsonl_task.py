"""Tasks anyone can write by hand: one JSON object per line (the format is documented in docs/evaluation.md).

A multiple-choice line::

    {"context": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0}

optionally with ``"delimiter"`` (what joins context and choice, default ``" "``) and ``"image"`` or
``"audio"`` (a file path relative to the JSONL file, placed before the context). A generation line::

    {"prompt": "2 + 2 =", "answer": "4"}

optionally with ``"stop"`` (strings that end the generation, default ``["\\n"]``) and
``"max_new_tokens"`` (default 16). An optional first line ``{"task": {"chance": 0.1, "description": "..."}}``
states a generation task's chance level (multiple choice computes its own). Blank lines are skipped.
The task's name is the file's stem.
"""

import json
from pathlib import Path
from typing import Any

from constellation_kit.errors import ConfigError
from constellation_kit.eval.task import EvalSuite, GenerationItem, MediaRef, MultipleChoiceItem, Task, multiple_choice_chance


class JSONLTask(EvalSuite):
    """A task read from a hand-written JSONL file (module docstring); named after the file's stem.

    Args:
        path: the ``.jsonl`` file.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.stem

    def build(self, datamodule: Any = None) -> Task:
        return read_jsonl_task(self.path)


def read_jsonl_task(path: str | Path) -> Task:
    """Parse a JSONL task file; a malformed line is a :class:`ConfigError` naming file, line and what to fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no JSONL task at {path}")
    header: dict[str, Any] = {}
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where} is not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{where} must be a JSON object")
        if "task" in record and not items:
            header = record["task"] if isinstance(record["task"], dict) else {}
            continue
        items.append(_item(record, path.parent, where))
    if not items:
        raise ConfigError(f"{path} holds no items")
    if all(isinstance(item, MultipleChoiceItem) for item in items):
        chance = multiple_choice_chance(items)
    else:
        chance = header.get("chance")
        chance = float(chance) if chance is not None else None
    return Task(path.stem, items, chance, str(header.get("description", "")))


def _item(record: dict[str, Any], root: Path, where: str) -> MultipleChoiceItem | GenerationItem:
    if "choices" in record:
        context, choices, answer = record.get("context", ""), record["choices"], record.get("answer")
        if not isinstance(context, str) or not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise ConfigError(f'{where}: "context" must be a string and "choices" a list of strings')
        if not isinstance(answer, int) or isinstance(answer, bool):
            raise ConfigError(f'{where}: "answer" must be the index of the right choice (an integer from 0)')
        media = None
        for modality in ("image", "audio"):
            if modality in record:
                if not isinstance(record[modality], str):
                    raise ConfigError(f'{where}: "{modality}" must be a file path (relative to the JSONL file)')
                media = MediaRef(modality, str((root / record[modality]).resolve()))
        try:
            return MultipleChoiceItem(context, tuple(choices), answer, str(record.get("delimiter", " ")), media)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
    if "prompt" in record:
        prompt, answer, stop = record["prompt"], record.get("answer"), record.get("stop", ["\n"])
        if not isinstance(prompt, str) or not isinstance(answer, str):
            raise ConfigError(f'{where}: "prompt" and "answer" must be strings')
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise ConfigError(f'{where}: "stop" must be a list of strings')
        return GenerationItem(prompt, answer, tuple(stop), int(record.get("max_new_tokens", 16)))
    raise ConfigError(f'{where}: a line needs "context"/"choices"/"answer" (multiple choice) or "prompt"/"answer" '
                      "(generation); see docs/evaluation.md")
