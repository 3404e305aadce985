"""lazy_default: the same lazy default as jsonargparse's lazy_instance, without inspect.stack()."""

import inspect

import pytest
from jsonargparse import ArgumentParser, lazy_instance

from constellation_kit.data import ByteLevelBPE, MultimodalDataModule
from constellation_kit.lazy_default import lazy_default


class Greeter:
    def __init__(self, name: str = "world", punctuation: str = "!") -> None:
        self.text = f"hello {name}{punctuation}"

    def greet(self) -> str:
        return self.text


def test_it_makes_what_lazy_instance_makes() -> None:
    ours, theirs = lazy_default(Greeter, name="kit"), lazy_instance(Greeter, name="kit")
    # jsonargparse names the class after its caller's module and reuses it: the same class here.
    assert type(ours) is type(theirs)
    assert type(ours).__name__ == "LazyInstance_Greeter" and type(ours).__module__ == __name__
    assert ours.lazy_get_init_data() == theirs.lazy_get_init_data()
    assert ours.greet() == "hello kit!"  # __init__ runs on first use


def test_it_never_walks_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    def walked(*args, **kwargs):
        raise AssertionError("inspect.stack() called")

    monkeypatch.setattr(inspect, "stack", walked)
    assert lazy_default(Greeter, punctuation="?").greet() == "hello world?"


class Party:
    def __init__(self, greeter: Greeter = lazy_default(Greeter, name="kit")) -> None:
        self.greeter = greeter


def test_a_parser_shows_and_builds_the_default() -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(Party, "party", sub_configs=True)
    defaults = parser.get_defaults()
    assert defaults.party.greeter.class_path == f"{__name__}.Greeter"
    assert defaults.party.greeter.init_args.name == "kit"
    assert parser.instantiate(defaults).party.greeter.greet() == "hello kit!"
    overridden = parser.parse_args(["--party.greeter.init_args.name=lab"])
    assert parser.instantiate(overridden).party.greeter.greet() == "hello lab!"


def test_the_data_modules_defaults_name_their_classes() -> None:
    tokenizer = inspect.signature(MultimodalDataModule).parameters["tokenizer"].default
    assert tokenizer.lazy_get_init_data().class_path == "constellation_kit.data.ByteLevelBPE"
    assert isinstance(tokenizer, ByteLevelBPE)
