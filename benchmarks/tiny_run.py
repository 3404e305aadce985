"""Time `constellation-kit fit --config recipes/tiny.yaml` end to end and read its curve back from MLflow.

    python benchmarks/tiny_run.py [--workdir DIR] [--cold] [extra CLI args...]

Runs this checkout's CLI (``python -m constellation_kit.cli``, not whichever install the console script
points at) in a fresh working directory (so MLflow starts empty); ``--cold`` gives it an empty
``$CONSTELLATION_KIT_CACHE`` (no tokenizer, token or media cache: a fresh clone's first run). It prints the
wall time, the val/loss curve and, as the last line, one JSON object with
``wall_s``, ``val_loss_first``, ``val_loss_last``, ``val_loss_ratio`` (last / first) and
``val_loss_ratio_from_first_interval`` (last / the first value after training began), and the
first and last value of every ``val/*_acc`` metric the run logged.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where runs/ and mlflow.db go (default: a temp dir)")
    parser.add_argument("--cold", action="store_true", help="an empty data cache, as on a fresh clone's first run")
    args, extra = parser.parse_known_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tiny-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "constellation_kit.cli", "fit", "--config", str(REPO / "recipes" / "tiny.yaml"), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.cold:
        env["CONSTELLATION_KIT_CACHE"] = str(workdir / "cache")
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, env=env, check=True)
    wall = time.perf_counter() - start

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    curve = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/loss"))
    print(f"\nwall time {wall:.1f} s; val/loss by step:")
    for step, value in curve:
        print(f"  {step:6d}  {value:.4f}")
    first, last = curve[0][1], curve[-1][1]
    after_start = curve[1][1] if len(curve) > 1 else first
    # Accuracy metrics (e.g. the grounding check's val/image_caption_acc): first and final value.
    accuracies = {}
    for key in sorted(k for k in run.data.metrics if k.startswith("val/") and k.endswith("_acc")):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        print(f"{key} by step: " + ", ".join(f"{step}: {value:.3f}" for step, value in history))
        name = key.removeprefix("val/")
        accuracies[f"{name}_first"], accuracies[f"{name}_last"] = round(history[0][1], 4), round(history[-1][1], 4)
    print(json.dumps({
        "wall_s": round(wall, 1),
        "val_loss_first": round(first, 4),
        "val_loss_last": round(last, 4),
        "val_loss_ratio": round(last / first, 4),
        "val_loss_ratio_from_first_interval": round(last / after_start, 4),
        **accuracies,
    }))


if __name__ == "__main__":
    sys.exit(main())
