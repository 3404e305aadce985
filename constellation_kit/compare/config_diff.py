"""The config keys whose values differ between runs: what a variant changed, nothing it shares."""

from collections.abc import Mapping

NOISE = ("init_args.", "class_path")
"""Dotted-key parts that say how jsonargparse spells a config, not what it is; left out of displayed keys."""

IGNORED_PREFIXES = ("trainer.logger.", "ckpt_path", "config")
"""Keys that differ between any two runs without being a difference in the experiment (names, paths)."""


def differing_keys(params_by_run: list[Mapping[str, str]]) -> list[str]:
    """The sorted keys whose value is not the same in every run (a key missing from a run counts as a value).

    ``[{"lr": "0.1", "d": "8"}, {"lr": "0.2", "d": "8"}]`` -> ``["lr"]``.
    """
    keys = set().union(*params_by_run) if params_by_run else set()
    differing = [
        key for key in keys
        if not key.startswith(IGNORED_PREFIXES) and len({params.get(key) for params in params_by_run}) > 1
    ]
    return sorted(differing)


def short_key(key: str) -> str:
    """``model.init_args.network.init_args.d_model`` -> ``model.network.d_model``; a class_path key ends in ``.class``."""
    short = key.replace("init_args.", "")
    if short.endswith("class_path"):
        short = short.removesuffix("class_path") + "class"
    return short


def short_value(value: str | None) -> str:
    """A param value as a table shows it: a class path by its class name, a missing one as ``-``."""
    if value is None:
        return "-"
    if value.count(".") >= 2 and value.replace(".", "").replace("_", "").isalnum() and not value[0].isdigit():
        return value.rsplit(".", 1)[1]
    return value
