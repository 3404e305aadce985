"""Read a gpu_check.sh run back from MLflow: tokens/s/GPU and MFU of the last full throughput window.

    python benchmarks/gpu_summary.py --workdir DIR [--experiment gpu-1b] [--peak-tflops 989]

Lightning's ThroughputMonitor logs ``train/device/items_per_sec`` (tokens, via ``length_fn``),
``train/device/flops_per_sec`` (from the module's active-parameter FLOPs) and, on GPUs Lightning
knows, ``train/device/mfu``. Lightning's table does not recognise every H200 name, so MFU is also
computed here as flops/s over ``--peak-tflops`` (dense bf16: 989 for H100 SXM and H200).
Prints a table and, last, one JSON line.
"""

import argparse
import json
from pathlib import Path

import mlflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="the run's directory (holds mlflow.db)")
    parser.add_argument("--experiment", default="gpu-1b")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    args = parser.parse_args()
    client = mlflow.MlflowClient(f"sqlite:///{args.workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.workdir / 'mlflow.db'}")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    wanted = ("train/device/items_per_sec", "train/device/flops_per_sec", "train/device/mfu", "train/loss")
    last = {}
    for key in wanted:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        if history:
            last[key] = history[-1]
            print(f"{key:32s} " + "  ".join(f"{step}:{value:.4g}" for step, value in history[-6:]))
        else:
            print(f"{key:32s} (not logged)")
    tokens = last.get("train/device/items_per_sec", (None, None))[1]
    flops = last.get("train/device/flops_per_sec", (None, None))[1]
    result = {
        "run_id": run.info.run_id,
        "tokens_per_s_per_gpu": round(tokens) if tokens else None,
        "tflops_per_s_per_gpu": round(flops / 1e12, 1) if flops else None,
        "mfu": round(flops / (args.peak_tflops * 1e12), 4) if flops else None,
        "mfu_lightning": round(last["train/device/mfu"][1], 4) if "train/device/mfu" in last else None,
        "peak_tflops": args.peak_tflops,
        "final_train_loss": round(last["train/loss"][1], 4) if "train/loss" in last else None,
    }
    print(f"\ntokens/s/GPU {result['tokens_per_s_per_gpu']}, MFU {result['mfu']} "
          f"(anchors on H100: torchtitan Llama-3.1-8B 5,762-6,667 tokens/s/GPU, 33-39% MFU; MPT-7B 8k 37.1%)")
    print(json.dumps(result))
    if tokens is None:
        raise SystemExit("no throughput logged: the window (window_size batches) never filled")


if __name__ == "__main__":
    main()
