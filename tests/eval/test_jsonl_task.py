"""Hand-written JSONL tasks: both kinds of line, media paths, and errors that name the line."""

import json
from pathlib import Path

import pytest

from constellation_kit.errors import ConfigError
from constellation_kit.eval.jsonl_task import read_jsonl_task
from constellation_kit.eval.task import GenerationItem, MediaRef, MultipleChoiceItem


def write(path: Path, *lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_multiple_choice_lines_with_media_and_their_chance(tmp_path: Path) -> None:
    task = read_jsonl_task(write(tmp_path / "capitals.jsonl",
                                 {"context": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0},
                                 "",
                                 {"context": "", "choices": ["a red circle", "a blue square", "a cat"], "answer": 2,
                                  "image": "pics/cat.png", "delimiter": ""}))
    assert task.name == "capitals" and task.kind == "multiple_choice" and task.metrics == ("acc", "acc_norm")
    assert task.items[0] == MultipleChoiceItem("The capital of France is", ("Paris", "Rome"), 0)
    assert task.items[1].media == MediaRef("image", str(tmp_path / "pics" / "cat.png"))
    assert task.chance == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_generation_lines_take_their_chance_from_the_header(tmp_path: Path) -> None:
    task = read_jsonl_task(write(tmp_path / "sums.jsonl", {"task": {"chance": 0.05, "description": "sums"}},
                                 {"prompt": "2 + 2 =", "answer": "4", "stop": ["\n", "."], "max_new_tokens": 3}))
    assert task.items == [GenerationItem("2 + 2 =", "4", ("\n", "."), 3)] and task.chance == 0.05


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad.jsonl:2 is not JSON"),
    ({"context": "x", "choices": ["a", "b"], "answer": 2}, r"bad.jsonl:2: .*answer=2"),
    ({"context": "x", "choices": ["a", "b"], "answer": "a"}, r"bad.jsonl:2: \"answer\" must be the index"),
    ({"question": "x"}, r"bad.jsonl:2: a line needs \"context\"/\"choices\"/\"answer\""),
    ({"prompt": "x", "answer": 4}, r"bad.jsonl:2: \"prompt\" and \"answer\" must be strings"),
    ({"prompt": "x", "answer": "4"}, r"mixes multiple-choice and generation"),
])
def test_a_bad_line_is_named(tmp_path: Path, line, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_jsonl_task(write(tmp_path / "bad.jsonl", {"context": "x", "choices": ["a", "b"], "answer": 0}, line))
