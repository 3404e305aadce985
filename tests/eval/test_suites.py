"""The built-in suites: deterministic, answerable from their context, with the chance levels they state."""

import re

import pytest

from constellation_kit.errors import ConfigError
from constellation_kit.eval import ArithmeticSuite, CopyingSuite, MQARSuite, PasskeySuite, VariableTrackingSuite
from constellation_kit.eval.suites import BUILTIN_SUITES, resolve_suite
from constellation_kit.eval.task import MultipleChoiceItem


@pytest.mark.parametrize("name", [n for n in BUILTIN_SUITES if "caption" not in n])
def test_a_suite_is_the_same_every_time_and_states_its_chance(name: str) -> None:
    first, second = BUILTIN_SUITES[name]().build(), BUILTIN_SUITES[name]().build()
    assert first.items == second.items and first.name == name
    if first.kind == "multiple_choice":
        assert first.chance == pytest.approx(0.25)
        assert all(len(set(item.choices)) == 4 for item in first.items)
        answers = [item.answer for item in first.items]
        assert len(set(answers)) == 4  # the right choice is not always in one place
    else:
        assert first.chance == pytest.approx(1 / 19)


def test_mqar_asks_a_key_listed_in_the_context() -> None:
    for item in MQARSuite(num_items=20).build().items:
        pairs, asked = item.context.split(" . ")
        value_of = dict(re.findall(r"([a-z]{2}) (\d+)", pairs))
        assert value_of[asked.split()[-1]] == item.choices[item.answer]
        assert set(item.choices) <= set(value_of.values())  # distractors are values of the same sequence


def test_variable_tracking_follows_the_chain() -> None:
    for item in VariableTrackingSuite(num_items=20).build().items:
        values: dict[str, int] = {}
        program, question = item.context.rsplit("\n", 1)
        exec(program, {}, values)  # the context is Python: run it
        assert str(values[question.split()[1]]) == item.choices[item.answer]


def test_copying_and_passkey_answers_are_in_their_context() -> None:
    for item in CopyingSuite(num_items=20).build().items:
        listed, repeated = item.context.split(" . ")
        words = listed.split()
        assert words[len(repeated.split())] == item.choices[item.answer]
    short, long = PasskeySuite(length=64, num_items=5).build(), PasskeySuite(length=512, num_items=5).build()
    for item in short.items:
        assert f"the pass key is {item.choices[item.answer]} ." in item.context
    assert len(long.items[0].context.split()) > 6 * len(short.items[0].context.split())


def test_arithmetic_answers_are_sums() -> None:
    for item in ArithmeticSuite(num_items=20).build().items:
        a, b = re.match(r"(\d+) \+ (\d+) =", item.prompt).groups()
        assert item.answer == str(int(a) + int(b))


def test_names_resolve_to_builtins_and_jsonl_files(tmp_path) -> None:
    (tmp_path / "mine.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "answer": 0}\n')
    assert isinstance(resolve_suite("copying"), CopyingSuite)
    assert resolve_suite("mine", str(tmp_path)).build().items == [MultipleChoiceItem("a", ("b", "c"), 0)]
    assert resolve_suite("hellaswag", str(tmp_path)) is None  # left to the harness
    with pytest.raises(ConfigError, match="num_kv_pairs=2 must be at least 4"):
        MQARSuite(num_kv_pairs=2)
