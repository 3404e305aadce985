"""The config keys whose values differ between runs: what a variant changed, nothing it shares."""

from collections.abc import Mapping

NOISE = ("init_args.", "class_path")
"""Dotted-key parts that say how jsonargparse spells a config, not what it is; left out of displayed keys."""

IGNORED_PREFIXES = ("trainer.logger.", "ckpt_path", "config")
"""Keys that differ between any two runs without being a difference in the experiment (names, paths)."""


def differing_keys(params_by_run: list[Mapping[str, str]]) -> list[str]:
    """The sorted keys whose value is not the same in every run (a key missing from a run counts as a value).

    ``[{"lr": "0.1", "d": "8"}, {"lr": "0.2", "d": "8"}]`` -> ``["lr"]``.

    A key a run lacks because the run replaced a whole section (``moe: null`` in a dense variant, an empty
    ``balance`` list) is not a difference of that run: the section's own key already shows it, and counting
    it would add a column for every option inside the section. Such a key differs only if the runs that
    have the section disagree on it.
    """
    keys = set().union(*params_by_run) if params_by_run else set()
    differing = []
    for key in keys:
        if key.startswith(IGNORED_PREFIXES):
            continue
        values = {params.get(key) for params in params_by_run if key in params or not _has_ancestor(params, key)}
        if len(values) > 1:
            differing.append(key)
    return sorted(differing)


def _has_ancestor(params: Mapping[str, str], key: str) -> bool:
    """Whether ``params`` holds a key that is a section above ``key`` (``a.b`` above ``a.b.c``)."""
    parts = key.split(".")
    return any(".".join(parts[:end]) in params for end in range(1, len(parts)))


def section_value(params: Mapping[str, str], key: str) -> str | None:
    """``params[key]``, or for a key that is a section in this run, what it holds: its class, or its length.

    The dense run's ``model.network.moe`` is ``None``; an MoE run has no such key, only the keys inside the
    section, so its cell says ``MoEFeedForward`` rather than a blank.
    """
    if key in params:
        return params[key]
    inside = [k.removeprefix(key + ".") for k in params if k.startswith(key + ".")]
    if not inside:
        return None
    if f"{key}.class_path" in params:
        return params[f"{key}.class_path"]
    heads = {k.split(".")[0] for k in inside}
    if all(head.isdigit() for head in heads):
        return f"[{len(heads)} items]"
    return "{...}"


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
