"""`pip install -e .` without extras: `fit` still parses every subcommand, and a command that needs an
extra says which `pip install` brings it (constellation_kit/extras.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

from constellation_kit.errors import ConfigError
from constellation_kit.extras import EXTRAS, missing_modules, require_extra

REPO = Path(__file__).resolve().parents[1]

# Runs the console script's main() with the extras' own modules unimportable, as after `pip install -e .`.
# Only those no other installed library probes: torchmetrics imports transformers whenever its package
# metadata is present, so blocking transformers here would break Lightning's import, not the kit's.
BLOCKED = ["datatrove", "lm_eval"]
WITHOUT_EXTRAS = """
import sys
BLOCKED = {blocked!r}

class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Uninstalled())
from constellation_kit.cli import main
main(sys.argv[1:])
"""


def run_without_extras(*args: str) -> subprocess.CompletedProcess:
    script = WITHOUT_EXTRAS.format(blocked=BLOCKED)
    return subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_every_installed_extra_is_found_here() -> None:
    # The test environment installs every extra (`.[test]`): nothing is reported missing.
    assert {extra: missing_modules(extra) for extra in EXTRAS} == {extra: [] for extra in EXTRAS}
    require_extra("curate", "curate")


def test_a_missing_module_names_its_extra_and_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EXTRAS, "curate", ("datatrove", "no_such_module_for_this_test"))
    assert missing_modules("curate") == ["no_such_module_for_this_test"]
    with pytest.raises(ConfigError, match=r"curate needs the 'curate' extra \(no_such_module_for_this_test not installed\): pip install -e \"\.\[curate\]\""):
        require_extra("curate", "curate")


def test_fit_parses_and_curate_says_how_to_install_it_without_the_extras() -> None:
    fit = run_without_extras("fit", "--config", "recipes/tiny.yaml", "--print_config")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "constellation_kit.train.MultimodalLanguageModel" in fit.stdout
    curate = run_without_extras("curate", "--input", "a.txt", "--output", "out")
    assert curate.returncode == 2, curate.stderr[-3000:]
    assert "constellation-kit curate needs the 'curate' extra (datatrove not installed)" in curate.stderr
    assert 'pip install -e ".[curate]"' in curate.stderr
