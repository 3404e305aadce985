"""The optional extras of ``pyproject.toml``, and the error that names the one a command lacks.

``pip install -e .`` installs what ``fit`` needs; a subcommand that needs more (``curate`` needs
datatrove) is still listed and its ``--help`` still works, but running it without its extra stops
with the ``pip install`` line that brings it, not with an import error from the kit's imports.
"""

import importlib.util

from constellation_kit.errors import ConfigError

EXTRAS: dict[str, tuple[str, ...]] = {
    "curate": ("datatrove", "orjson"),
    "eval": ("lm_eval",),
    "hf": ("transformers", "safetensors"),
}
"""Each extra's importable top-level modules (the packages it adds)."""


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (found without importing them)."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a finder that refuses it, or a module left as None in sys.modules
            found = False
        if not found:
            missing.append(module)
    return missing


def install_line(extra: str) -> str:
    """The pip command that installs ``extra`` in the kit's clone."""
    return f'pip install -e ".[{extra}]"'


def help_suffix(extra: str) -> str:
    """What a command's help adds when ``extra`` is missing here ("" when it is installed)."""
    return f" (needs the {extra} extra: {install_line(extra)})" if missing_modules(extra) else ""


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`ConfigError` naming the ``pip install`` for ``extra`` if any of its modules is missing."""
    missing = missing_modules(extra)
    if missing:
        raise ConfigError(
            f"{what} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"{install_line(extra)} in the kit's clone (or pip install \"constellation-kit[{extra}]\")"
        )
