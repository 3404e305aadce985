"""Every YAML in the repository parses in a test, the way its users load it: recipes through the real
CLI, variants and presets stacked on their base, benchmark configs stacked as their script stacks them."""

import contextlib
import functools
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from constellation_kit.cli import main
from constellation_kit.recipes import with_recipe_bases
from conftest import REPO, TINY, variant_base

BASE = REPO / "recipes" / "base.yaml"
SIZES = [REPO / "recipes" / f"{name}.yaml" for name in ("tiny", "small", "xl")]
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if p != BASE)
VARIANTS = sorted((REPO / "recipes" / "variants").glob("*.yaml"))
CALLBACK_PRESETS = sorted((REPO / "callbacks").glob("*.yaml"))
CURATE_CONFIGS = sorted((REPO / "recipes" / "curate").glob("*.yaml"))  # parsed in tests/commands/test_curate.py
BENCHMARK_STACKS = {
    # benchmarks/gpu_check.sh: small, then the ~1B shape, then the throughput preset.
    REPO / "benchmarks" / "gpu_1b.yaml": [REPO / "recipes" / "small.yaml", REPO / "benchmarks" / "gpu_1b.yaml",
                                          REPO / "callbacks" / "throughput.yaml"],
}
MKDOCS = REPO / "mkdocs.yml"
MAX_VARIANT_LINES = 15


@functools.cache
def print_config(*configs: Path) -> dict:
    """``fit --config ... --print_config``, in-process; cached, so tiny resolves once per session."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(["fit", *(f"--config={c}" for c in configs), "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def class_paths(callbacks: list[dict]) -> list[str]:
    return [c["class_path"].rsplit(".", 1)[-1] for c in callbacks]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_with_the_base_folded_in(recipe: Path) -> None:
    config = print_config(recipe)
    assert config["model"]["class_path"].startswith("constellation_kit.")
    assert config["data"]["class_path"].startswith("constellation_kit.")
    # base.yaml's pieces survive each recipe's partial `model:`/`trainer:` blocks (not replaced by them)
    model = config["model"]["init_args"]
    assert model["optimizer"]["class_path"] == "torch.optim.AdamW" and model["optimizer"]["init_args"]["betas"] == [0.9, 0.95]
    assert model["scheduler"]["init_args"]["warmup_fraction"] == 0.05
    assert class_paths(model["balance"]) == ["SwitchBalanceLoss", "RouterZLoss", "RouterL2Penalty"]
    assert config["trainer"]["gradient_clip_val"] == 1.0
    callbacks = class_paths(config["trainer"]["callbacks"])
    assert callbacks[:3] == ["KeepFreedMemory", "ValidateAtStart", "TQDMProgressBar"]
    assert callbacks[-1] == "ModelCheckpoint"  # last: --trainer.callbacks.init_args.every_n_train_steps reaches it
    assert config["trainer"]["callbacks"][-1]["init_args"]["filename"] == "step{step:07d}"
    # Lightning refuses to clip the gradients of a fused optimizer (it unscales them itself) under a
    # mixed precision, at the first step: fused AdamW only where the recipe trains in full precision.
    if "mixed" in str(config["trainer"].get("precision")):
        assert not model["optimizer"]["init_args"].get("fused"), f"{recipe.name}: fused AdamW under {config['trainer']['precision']}"


@pytest.mark.parametrize("size", SIZES, ids=lambda p: p.name)
def test_each_size_builds_on_the_base_and_repeats_none_of_it(size: Path) -> None:
    recipe = yaml.safe_load(size.read_text())
    assert recipe["config"] == "base.yaml"
    model = recipe["model"]["init_args"]
    assert "balance" not in model and "scheduler" not in model and "class_path" not in model["optimizer"]
    assert "callbacks" not in recipe["trainer"] and "class_path" not in recipe["trainer"]["logger"]


def test_the_base_is_named_before_its_recipe_once() -> None:
    smoke = REPO / "recipes" / "xl-smoke.yaml"
    argv = ["fit", "--config", str(REPO / "recipes" / "xl.yaml"), f"--config={smoke}", "--trainer.max_steps=1"]
    assert with_recipe_bases(argv) == ["fit", f"--config={BASE}", "--config", str(REPO / "recipes" / "xl.yaml"),
                                       f"--config={smoke}", "--trainer.max_steps=1"]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda p: p.name)
def test_every_variant_stacks_on_its_base(variant: Path) -> None:
    assert print_config(Path(variant_base(variant)), variant)["model"]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda p: p.name)
def test_every_variant_is_short(variant: Path) -> None:
    lines = [line for line in variant.read_text().splitlines() if line.strip()]
    assert len(lines) <= MAX_VARIANT_LINES, f"{variant.name}: {len(lines)} non-blank lines; a bigger change is a recipe"


@pytest.mark.parametrize("preset", CALLBACK_PRESETS, ids=lambda p: p.name)
def test_every_callback_preset_stacks_on_tiny(preset: Path) -> None:
    tiny = class_paths(print_config(Path(TINY))["trainer"]["callbacks"])
    stacked = class_paths(print_config(Path(TINY), preset)["trainer"]["callbacks"])
    trainer = yaml.safe_load(preset.read_text())["trainer"]
    if "callbacks" in trainer:  # a preset that replaces the recipe's list (minimal)
        assert stacked == class_paths(trainer["callbacks"])
    else:  # the rest add to it
        assert stacked == tiny + class_paths(trainer.get("callbacks+", []))


@pytest.mark.parametrize("config", list(BENCHMARK_STACKS), ids=lambda p: p.name)
def test_every_benchmark_config_parses_stacked_as_its_script_stacks_it(config: Path) -> None:
    stack = BENCHMARK_STACKS[config]
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    assert all(p.relative_to(REPO).as_posix() in script for p in stack)  # the stack this test parses is the real one
    assert print_config(*stack)["trainer"]["max_steps"] == yaml.safe_load(config.read_text())["trainer"]["max_steps"]


class MkDocsYamlLoader(yaml.SafeLoader):
    """Safe YAML that reads mkdocs.yml's ``!!python/name:`` tags (the mermaid fence's formatter) as their
    dotted names instead of importing them: this test checks the nav, not the plugins."""


MkDocsYamlLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: suffix)


def nav_pages(nav: list) -> Iterator[str]:
    """Every page file in a (possibly sectioned) mkdocs nav."""
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            yield from nav_pages(value) if isinstance(value, list) else [value]


def test_mkdocs_config_loads_and_every_page_exists() -> None:
    site = yaml.load(MKDOCS.read_text(), Loader=MkDocsYamlLoader)
    pages = list(nav_pages(site["nav"]))
    assert pages and all((REPO / "docs" / page).is_file() for page in pages)


def repository_yaml() -> set[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.yaml", "*.yml"],
                                cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
        return {REPO / name for name in listed if (REPO / name).is_file()}
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every YAML but run outputs
        return {p for ext in ("*.yaml", "*.yml") for p in REPO.rglob(ext)
                if not {".git", "runs", ".venv", "site"} & set(p.relative_to(REPO).parts)}


def test_every_yaml_in_the_repository_is_parsed_by_a_test() -> None:
    covered = {BASE, *RECIPES, *VARIANTS, *CALLBACK_PRESETS, *CURATE_CONFIGS, *BENCHMARK_STACKS, MKDOCS}
    unparsed = sorted(str(p.relative_to(REPO)) for p in repository_yaml() - covered)
    assert not unparsed, f"add these to a parse test in tests/test_recipes.py: {unparsed}"
