"""What a run was: the code's git commit, the packages, the hardware. Logged to MLflow with every run.

A metric curve is only comparable to another if one knows what produced it. :func:`record_run`
tags each MLflow run with the kit's git commit and whether the checkout had uncommitted changes,
the versions of the packages that decide the numbers, and the machine (CPU, memory, GPUs), and
keeps the full list of installed distributions as an ``environment.json`` artifact.
"""

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from mlflow import MlflowClient

KEY_PACKAGES = ("constellation-kit", "torch", "torchaudio", "lightning", "jsonargparse", "mlflow", "timm",
                "tokenizers", "litdata", "flash-attn", "transformers")
"""Packages whose versions are tags of their own (``version.<name>``); all others are in environment.json."""

SOURCE = Path(__file__).resolve().parents[1]
"""The directory holding the kit's source: a git checkout for an editable install."""


def git_state(directory: Path = SOURCE) -> dict[str, str]:
    """``{"git.commit": sha, "git.dirty": "true"|"false"}`` for the checkout at ``directory``, or ``{"git.commit":
    "none"}`` when it is not one (an installed wheel) or git is missing."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "none"}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def package_versions() -> dict[str, str]:
    """Every installed distribution's version, by name."""
    versions = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            versions[name] = distribution.version
    return dict(sorted(versions.items(), key=lambda item: item[0].lower()))


def hardware() -> dict[str, str]:
    """The machine: CPU, logical cores, memory, and each visible GPU's name (with the CUDA version)."""
    info = {
        "hardware.platform": platform.platform(),
        "hardware.cpu": _cpu_model(),
        "hardware.cpu_count": str(os.cpu_count()),
        "hardware.python": platform.python_version(),
    }
    try:
        import psutil

        info["hardware.memory_gib"] = f"{psutil.virtual_memory().total / 2**30:.1f}"
    except ImportError:  # psutil is a dependency; keep the record anyway
        pass
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
        info["hardware.gpus"] = f"{len(names)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
        info["hardware.cuda"] = str(torch.version.cuda)
    else:
        info["hardware.gpus"] = "none"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_record() -> dict[str, Any]:
    """Tags (git, key package versions, hardware) and the full package list."""
    versions = package_versions()
    lowered = {name.lower(): version for name, version in versions.items()}
    tags = {**git_state(), **hardware()}
    tags.update({f"version.{name}": lowered[name] for name in KEY_PACKAGES if name in lowered})
    return {"tags": tags, "packages": versions}


def record_run(client: MlflowClient, run_id: str, folder: str | None = None) -> dict[str, Any]:
    """Tag MLflow run ``run_id`` with :func:`run_record`'s tags and log ``environment.json`` (into the artifact
    ``folder``, e.g. a resume's); returns the record."""
    record = run_record()
    for key, value in record["tags"].items():
        client.set_tag(run_id, key, value)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "environment.json"
        path.write_text(json.dumps(record, indent=2))
        client.log_artifact(run_id, str(path), folder)
    return record
