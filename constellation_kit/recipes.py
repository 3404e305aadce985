"""Recipes that build on other recipes: a top-level ``config: base.yaml`` key, applied as an earlier ``--config``.

jsonargparse loads a ``config:`` file named inside a recipe, but then validates the recipe's own
``model:``/``trainer:`` blocks against the values from *before* that file, so a partial
``model: {init_args: {...}}`` silently drops the base's model. Inserting each base on the command
line just before the recipe that names it makes recipes compose key by key, as stacked
``--config`` files do, while ``constellation-kit fit --config recipes/tiny.yaml`` stays one command.
"""

from pathlib import Path

import yaml


def recipe_bases(recipe: Path) -> list[Path]:
    """The recipes ``recipe`` builds on through its top-level ``config:`` key, innermost first.

    Paths resolve beside the file that names them, as jsonargparse resolves them.
    """
    found: list[Path] = []

    def visit(path: Path, seen: tuple[Path, ...]) -> None:
        try:
            named = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else None
        except (OSError, yaml.YAMLError):
            return  # not a readable recipe: jsonargparse reports it
        named = named.get("config") if isinstance(named, dict) else None
        for name in [named] if isinstance(named, str) else (named or []):
            base = (path.parent / str(name)).resolve()
            if base not in seen:
                visit(base, (*seen, base))
                if base not in found:
                    found.append(base)

    visit(recipe.resolve(), (recipe.resolve(),))
    return found


def with_recipe_bases(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config`` recipe's bases inserted as ``--config`` just before it (once)."""
    out: list[str] = []
    given: set[Path] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg.startswith("--config="):
            value, step = arg.split("=", 1)[1], [arg]
        elif arg == "--config" and i + 1 < len(argv):
            value, step = argv[i + 1], [arg, argv[i + 1]]
            i += 1
        i += 1
        if value is None:
            out.append(arg)
            continue
        for base in recipe_bases(Path(value)):
            if base not in given:
                given.add(base)
                out.append(f"--config={base}")
        given.add(Path(value).resolve())
        out.extend(step)
    return out
