"""Shared fixtures: a per-session cache (so the tokenizer trains once) and a small recipe override."""

import os
import socket
from pathlib import Path

import mlflow
import pytest

# Every model and data set the tests use is made locally: a Hub lookup would only be a wrong path waiting
# for a network time-out. Set before any test module imports transformers or datasets (they read it once).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "recipes" / "tiny.yaml")
XL = str(REPO / "recipes" / "xl.yaml")


def free_port() -> int:
    """A TCP port nobody listens on now, for a test's own process-group rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def variant_base(variant: Path) -> str:
    """The recipe a variant stacks on in tests: tiny (a variant's header names what it stacks on; a
    file that needs its own base, as xl-smoke needs xl, is a recipe with `config:`, not a variant)."""
    return TINY

SMALL_DATA = [
    # A few dozen stdlib files and a 512-token vocabulary: seconds to tokenise, enough windows.
    "--data.init_args.source.init_args.max_documents=40",
    "--data.init_args.tokenizer.init_args.vocab_size=512",
    "--data.init_args.seq_len=32",
    "--data.init_args.global_batch_size=4",
    "--data.init_args.val_fraction=0.2",
    # 200 generated pictures and 200 clips instead of 4000 each: a second to write, enough to ground.
    "--data.init_args.builtin_images=200",
    "--data.init_args.builtin_audio=200",
]
"""CLI overrides that shrink the tiny recipe's data for tests."""


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test shares one cache directory, fresh for the session, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["CONSTELLATION_KIT_CACHE"] = str(cache)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return cache


def enter_run_directory(patch: pytest.MonkeyPatch, directory: Path) -> Path:
    """Make ``directory`` the working directory whose ``runs/`` and ``mlflow.db`` the next run uses.

    Lightning's MLflow logger calls mlflow.set_tracking_uri, which also exports MLFLOW_TRACKING_URI:
    an earlier in-process run's (absolute) store would otherwise become this run's default, and its
    subprocesses'.
    """
    patch.chdir(directory)
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return directory


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty working directory: runs/ and mlflow.db land there."""
    return enter_run_directory(monkeypatch, tmp_path)


def tracking_client(workdir: Path | None = None) -> mlflow.MlflowClient:
    """The MLflow store of ``workdir`` (default: the working directory), by absolute path.

    Never ``sqlite:///mlflow.db``: MLflow caches one store per URI string per process, so a relative
    URI would read whichever test's store the process opened first.
    """
    return mlflow.MlflowClient(f"sqlite:///{(workdir or Path.cwd()).resolve() / 'mlflow.db'}")


SHORT = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2"]
"""CLI overrides for a 2-step run that validates once, at its end."""


def fit_in(directory: Path, *configs: str):
    """A 2-step tiny run (plus ``configs``) in ``directory``: the finished CLI and its final MLflow metrics."""
    from constellation_kit.cli import ConstellationCLI

    with pytest.MonkeyPatch.context() as patch:
        enter_run_directory(patch, directory)
        cli = ConstellationCLI(args=["fit", f"--config={TINY}", *configs, *SMALL_DATA, *SHORT])
        cli.run_directory = directory.resolve()  # runs/ and mlflow.db are relative to it
        return cli, tracking_client().get_run(cli.trainer.logger.run_id).data.metrics


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """One 2-step tiny run (both encoders) shared by every test that needs a trained run or its checkpoint."""
    return fit_in(tmp_path_factory.mktemp("tiny"))


def last_checkpoint(cli) -> Path:
    """The ``last.ckpt`` a finished :func:`fit_in` run wrote, by absolute path."""
    return cli.run_directory / cli.trainer.checkpoint_callback.dirpath / "last.ckpt"
