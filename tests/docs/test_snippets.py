"""Every fenced block in ``docs/*.md`` and ``README.md`` is executed, or parsed by what would run it, or marked.

What "executed" means, by the fence's language:

- ``yaml``: nested under its place in a recipe, saved, and stacked as a ``--config`` on a recipe, then
  parsed by the real ``fit`` parser: jsonargparse imports every ``class_path`` and checks every key
  against the class's constructor, so a renamed class or option fails.
- ``python``: compiled, and its import statements executed (a renamed module or function fails).
- ``json``: parsed, as one JSON document or as JSON Lines.
- ``bash``: each command, continuation lines joined, comments dropped, ``NAME=value`` lines substituted:

  - ``constellation-kit ...`` and ``python -m constellation_kit.cli ...`` (also after ``torchrun`` and
    ``srun``) are parsed by the real CLI parser: the subcommand, every option, every ``--config`` file
    loaded and validated. ``--help`` and ``--print_config`` run for real, as they are parser actions;
    ``compare`` runs for real, on a store holding three runs in the experiment it names. Training,
    evaluation and export are parse-checked only: each has its own end-to-end tests, and running them
    all here would cost minutes. The quickstart's path from a first variant to a comparison runs for
    real (:func:`test_the_quickstart_variant_then_compare_runs`).
  - ``pip install -e ".[extra]"``: every extra named exists in ``pyproject.toml``.
  - ``python path/script.py --option ...``: the script exists and declares each option.
  - ``python -m module``: the module is importable. ``python - <<'PY' ... PY``: the body as a python block.
  - anything else (a server, a cluster launcher) fails unless its block is marked.
- ``text`` and ``mermaid``: program output and diagrams, not code. A fence with no language fails.

The marks, an HTML comment on the line just before a fence (invisible on the site):

- ``<!-- docs-test: cluster-only: REASON -->``: the block needs a cluster; its kit commands are still
  parsed, the launchers around them are not run.
- ``<!-- docs-test: skip: REASON -->``: not executed at all (a web server, the suite itself).
- ``<!-- docs-test: yaml on RECIPE [at DOTTED.KEY] [as FILE] -->``: the recipe a YAML snippet stacks on
  (default ``recipes/tiny.yaml``), where the fragment sits in a recipe (default: the top level), and a
  file name under which later commands of the same page find it.
- ``<!-- docs-test: save as FILE -->``: a YAML block that is not a training recipe (a curation config):
  written to FILE verbatim for the page's later commands, which parse it.
- ``<!-- docs-test: python as FILE -->``: the block is written to FILE in the page's working directory
  and imported, so later YAML of the page can name its classes.
"""

import ast
import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO, SHORT, SMALL_DATA, enter_run_directory, tracking_client

PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"^```(?P<lang>[^\s`]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
MARK = re.compile(r"<!--\s*docs-test:\s*(?P<mark>.*?)\s*-->\s*\n\s*\Z", re.S)
PLACEHOLDER = re.compile(r"<(?P<words>[\w .-]+)>")  # <run id> in a path: one shell word, RUN_ID
KIT = ("constellation-kit",)
LAUNCHERS = {"torchrun", "srun"}
RECIPE_COMMANDS = {"fit", "validate", "test", "predict", "plan"}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    mark: str

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for fence in FENCE.finditer(text):
        before = text[: fence.start()]
        mark = MARK.search(before[-400:])
        found.append(Block(page, before.count("\n") + 1, fence["lang"], fence["body"], mark["mark"] if mark else ""))
    return found


ALL = [block for page in PAGES for block in blocks(page)]


class ParseOnly:
    """The real CLI parser, built once: parses any ``constellation-kit`` argv without running it."""

    def __init__(self) -> None:
        import constellation_kit.commands  # noqa: F401  (registers the subcommands)
        from constellation_kit.cli import ConstellationCLI

        class _CLI(ConstellationCLI):
            def before_instantiate_classes(self) -> None: ...
            def instantiate_classes(self) -> None: ...
            def after_instantiate_classes(self) -> None: ...
            def _run_subcommand(self, subcommand: str) -> None: ...

        self.parser = _CLI(args=["compare", "--experiment", "x"]).parser

    def parse(self, argv: list[str]) -> str:
        """Parse ``argv``; return what a parser action printed (``--help``, ``--print_config``)."""
        from constellation_kit.recipes import with_recipe_bases

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                self.parser.parse_args(with_recipe_bases(argv))
            except SystemExit as exit_:
                if exit_.code not in (0, None):
                    raise AssertionError(f"constellation-kit {' '.join(argv)}:\n{err.getvalue()[-3000:]}") from None
        return out.getvalue()


@pytest.fixture(scope="module")
def cli_parser() -> ParseOnly:
    return ParseOnly()


def commands(body: str) -> list[list[str]]:
    """The commands of a shell block as argv lists, heredoc bodies attached as ``<<BODY`` words."""
    lines, variables, out = body.splitlines(), {}, []
    index = 0
    while index < len(lines):
        line = lines[index]
        while line.rstrip().endswith("\\") and index + 1 < len(lines):
            index += 1
            line = line.rstrip()[:-1] + " " + lines[index]
        heredoc = re.search(r"<<-?'?(\w+)'?", line)
        if heredoc:
            end = lines.index(heredoc[1], index + 1)
            line = line[: heredoc.start()] + " " + shlex.quote("<<" + "\n".join(lines[index + 1 : end]))
            index = end
        index += 1
        line = PLACEHOLDER.sub(lambda m: m["words"].replace(" ", "_").upper(), line)
        words = shlex.split(line, comments=True)
        if len(words) == 1 and re.fullmatch(r"\w+=.+", words[0], re.S):
            name, value = words[0].split("=", 1)
            variables[name] = value
            continue
        # $NAME alone is split into words as the shell splits an unquoted variable; inside a word, substituted
        words = [part for word in words for part in (
            shlex.split(variables[word[1:]]) if word.startswith("$") and word[1:] in variables
            else [re.sub(r"\$(\w+)", lambda m: variables.get(m[1], m[0]), word)])]
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(words[:cut])
            words = words[cut + 1 :]
    return [argv for argv in out if argv]


def kit_argv(argv: list[str]) -> list[str] | None:
    """The ``constellation-kit`` arguments of a command, launched directly or by torchrun/srun; else None."""
    if argv[0] in LAUNCHERS:  # torchrun [its options] -m constellation_kit.cli ..., srun constellation-kit ...
        starts = [i for i, word in enumerate(argv) if word in KIT or word == "constellation_kit.cli"]
        return argv[starts[0] + 1 :] if starts else None
    if Path(argv[0]).name in KIT:
        return argv[1:]
    if argv[0] == "python" and argv[1:3] == ["-m", "constellation_kit.cli"]:
        return argv[3:]
    return None


def nested(fragment: dict, at: str) -> dict:
    for key in reversed(at.split(".")) if at else []:
        fragment = {key: fragment}
    return fragment


def check_python(source: str, where: str) -> None:
    """Compile ``source`` and execute its imports (not the rest: it may need a checkpoint or a download)."""
    tree = ast.parse(source, where)
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(body=imports, type_ignores=[]), where, "exec"), {})  # noqa: S102


@pytest.fixture(scope="module")
def store_with_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow store with three finished runs in each experiment the docs' ``compare`` commands name."""
    sys.path.insert(0, str(REPO / "tests" / "compare"))
    from test_runs_and_table import log_runs

    directory = tmp_path_factory.mktemp("compare-store")
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    experiments = {argv[argv.index("--experiment") + 1] for block in ALL if block.lang == "bash"
                   for argv in map(kit_argv, commands(block.body))
                   if argv and argv[0] == "compare" and "--experiment" in argv}
    for experiment in sorted(experiments):
        log_runs(client, experiment, 3)
    return directory


def page_directory(tmp_path: Path) -> Path:
    """A working directory where the repository's relative paths (recipes/, callbacks/, ...) resolve."""
    for name in ("recipes", "callbacks", "benchmarks"):  # not docs/: a command may write into it
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def check_command(argv: list[str], block: Block, workdir: Path, store: Path) -> list[str] | None:
    """Check one shell command; return its ``constellation-kit`` arguments when they are still to be parsed."""
    kit = kit_argv(argv)
    program = Path(argv[0]).name
    if kit is not None:
        if kit and kit[0] == "compare":
            shutil.copy(store / "mlflow.db", workdir / "mlflow.db")
            from constellation_kit.cli import main

            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                main(kit)
            assert "variant-2" in out.getvalue(), out.getvalue()
            return None
        return kit
    if program == "pip" and ("-e" in argv or "." in argv):  # the kit itself, with extras: they must exist
        assert argv[1] == "install", argv
        for spec in argv[2:]:
            for extra in re.findall(r"\[([\w,]+)\]", spec):
                unknown = set(extra.split(",")) - set(PYPROJECT["project"]["optional-dependencies"])
                assert not unknown, f"{block.id}: pip install names extras pyproject.toml lacks: {unknown}"
        return None
    if program == "python" and len(argv) > 1:
        if argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, f"{block.id}: no module {argv[2]}"
            return None
        if argv[1] == "-":
            body = next(word for word in argv if word.startswith("<<"))[2:]
            check_python(body, f"{block.id} (heredoc)")
            return None
        script = REPO / argv[1] if (REPO / argv[1]).exists() else workdir / argv[1]
        assert script.is_file(), f"{block.id}: no script {argv[1]}"
        source = script.read_text()
        for option in (word.split("=")[0] for word in argv[2:] if word.startswith("--")):
            assert option in source, f"{block.id}: {argv[1]} does not declare {option}"
        return None
    if block.mark.startswith("cluster-only:") or (block.mark.startswith("skip:") and program not in LAUNCHERS):
        return None
    raise AssertionError(f"{block.id}: nothing here can run `{' '.join(argv)}`; mark the block "
                         f"<!-- docs-test: skip: why --> or, for a launcher, <!-- docs-test: cluster-only: why -->")


def grouped(argvs: list[list[str]]) -> list[list[str]]:
    """One argv per subcommand and stack of ``--config`` files, holding every command's other options in order.

    Parsing a recipe costs seconds (jsonargparse checks every class in it), and a page often shows the same
    recipe with a dozen different overrides: checked together, each override is still validated. ``--help``
    and ``--print_config`` act when parsed, so they are parsed alone.
    """
    groups: dict[tuple, list[str]] = {}
    alone = []
    for argv in argvs:
        if argv[0] not in RECIPE_COMMANDS or any(word in ("--help", "-h", "--print_config") for word in argv):
            alone.append(argv)
            continue
        configs, rest, index = [], [], 1
        while index < len(argv):
            if argv[index] == "--config":
                configs.append(argv[index + 1])
                index += 2
                continue
            (configs if argv[index].startswith("--config=") else rest).append(argv[index].removeprefix("--config="))
            index += 1
        groups.setdefault((argv[0], *configs), [argv[0], *(f"--config={c}" for c in configs)]).extend(rest)
    return [*groups.values(), *alone]


def test_every_fence_names_its_language_and_every_mark_its_reason() -> None:
    for block in ALL:
        assert block.lang, f"{block.id}: a fence without a language; say bash, yaml, python, json or text"
        if block.mark.startswith(("skip", "cluster-only")):
            assert len(block.mark.split(":", 1)[-1].strip()) > 5, f"{block.id}: a mark without its reason"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_block_of_the_page_runs_or_parses(page: Path, cli_parser: ParseOnly, store_with_runs: Path,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = enter_run_directory(monkeypatch, page_directory(tmp_path))
    monkeypatch.syspath_prepend(str(workdir))
    to_parse = []  # the kit commands, parsed at the end, after the page's files are written
    for block in blocks(page):
        mark = block.mark
        if mark.startswith("skip:") or block.lang in ("text", "mermaid"):
            continue
        if block.lang == "yaml" and mark.startswith("save as "):
            name = mark.removeprefix("save as ").strip()
            later = [b for b in blocks(page) if b.line > block.line and b.lang == "bash" and name in b.body]
            assert later, f"{block.id}: saved as {name}, but no later command of the page uses it"
            (workdir / name).write_text(block.body)
        elif block.lang == "yaml":
            options = re.fullmatch(r"(?:yaml)?\s*(?:on (?P<recipe>\S+))?\s*(?:at (?P<at>\S+))?\s*(?:as (?P<file>\S+))?",
                                   mark) if not mark.startswith("cluster-only:") else None
            options = options.groupdict() if options else {}
            fragment = yaml.safe_load(block.body)
            assert isinstance(fragment, dict), f"{block.id}: a YAML snippet should be a mapping"
            saved = workdir / (options.get("file") or f"snippet-{block.line}.yaml")
            saved.write_text(yaml.safe_dump(nested(fragment, options.get("at") or "")))
            cli_parser.parse(["fit", f"--config={options.get('recipe') or 'recipes/tiny.yaml'}", f"--config={saved}"])
        elif block.lang == "python":
            python_file = re.fullmatch(r"python as (\S+)", mark)
            if python_file:
                target = workdir / python_file[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.body)
                for parent in list(target.relative_to(workdir).parents)[:-1]:
                    (workdir / parent / "__init__.py").touch()
                module = ".".join(target.relative_to(workdir).with_suffix("").parts)
                for name in [n for n in sys.modules if n.split(".")[0] == module.split(".")[0]]:
                    monkeypatch.delitem(sys.modules, name)  # another page's my_project, from its own directory
                importlib.invalidate_caches()
                importlib.import_module(module)
            else:
                check_python(block.body, block.id)
        elif block.lang == "json":
            try:
                json.loads(block.body)
            except json.JSONDecodeError:
                for line in filter(str.strip, block.body.splitlines()):
                    json.loads(line)
        elif block.lang == "bash":
            for argv in commands(block.body):
                kit = check_command(argv, block, workdir, store_with_runs)
                if kit is not None:
                    to_parse.append(kit)
        else:
            raise AssertionError(f"{block.id}: no rule runs a `{block.lang}` block (see this module's docstring)")
    for argv in grouped(to_parse):
        cli_parser.parse(argv)


@pytest.mark.slow
def test_the_quickstart_variant_then_compare_runs(tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    """The quickstart's commands, for real: the tiny run (the shared one), the first variant with the suite's
    short overrides appended, then the quickstart's own ``compare`` line: both runs, the key that differs."""
    from constellation_kit.cli import main

    quickstart = [kit_argv(argv) for block in blocks(REPO / "docs" / "quickstart.md") if block.lang == "bash"
                  for argv in commands(block.body)]
    variant = next(argv for argv in quickstart if argv and "recipes/variants/moe-top1.yaml" in argv and len(argv) == 5)
    compare = next(argv for argv in quickstart if argv and argv[0] == "compare")
    cli, _ = tiny_run
    workdir = enter_run_directory(monkeypatch, page_directory(tmp_path))
    shutil.copy(cli.run_directory / "mlflow.db", workdir / "mlflow.db")
    main([*variant, *SMALL_DATA, *SHORT])
    capsys.readouterr()
    main(compare)
    out = capsys.readouterr().out
    assert "tiny+moe-top1" in out and "top_k" in out, out
    assert (workdir / "compare.png").read_bytes()[:4] == b"\x89PNG"
    table = (workdir / "compare.md").read_text()
    assert table.count("\n| tiny") == 2, table
    assert {r.info.run_name for r in tracking_client(workdir).search_runs(
        [tracking_client(workdir).get_experiment_by_name("tiny").experiment_id])} >= {"tiny", "tiny+moe-top1"}
