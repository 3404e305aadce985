"""Graph breaks of a multimodal module's parts compiled by the parallelize step, and compiled vs eager, on CPU.

    python benchmarks/parallel_parts.py [--steps N]

The real code path on one gloo process: a MultimodalLanguageModel (2-block network, a 2-block timm
ViT, a 2-block audio encoder, their projectors) built on the meta device, then
``parallelize_module`` with activation checkpointing, ``torch.compile`` per block (inductor) and
FSDP2, in bf16 mixed precision and in fp32. Counts dynamo's graph breaks over a training step
(0: every compiled block is one graph: the network's, the ViT's and the audio encoder's), the
compile time (first step), the median step time compiled and eager side by side, and the
compiled-vs-eager loss difference. Prints one JSON object last.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._dynamo.utils import counters

REPO = Path(__file__).resolve().parents[1]


def measure(rank: int, port: int, steps: int, results: dict) -> None:
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        from constellation_kit.train.parallelize import parallelize_module
        from train.test_parallelize import built_on_meta, half_batch

        mesh = init_device_mesh("cpu", (1,))
        batch = half_batch(0)
        for precision, dtypes in (("bf16-mixed", (torch.bfloat16, torch.float32)), ("fp32", (None, None))):
            row = {}
            for compiled in (False, True):
                torch._dynamo.reset()
                counters.clear()
                model = built_on_meta()
                torch.manual_seed(0)
                parallelize_module(model, mesh, "cpu", activation_checkpointing=True, compile=compiled,
                                   param_dtype=dtypes[0], reduce_dtype=dtypes[1])
                model.train()
                times, losses = [], []
                for _ in range(steps + 1):
                    start = time.perf_counter()
                    loss = model._loss(batch)[0]
                    loss.backward()
                    times.append(time.perf_counter() - start)
                    losses.append(float(loss))
                    model.zero_grad()
                name = "compiled" if compiled else "eager"
                row[f"{name}_first_step_s"] = round(times[0], 2)
                row[f"{name}_step_ms"] = round(1000 * statistics.median(times[1:]), 1)
                row[f"{name}_loss"] = losses[0]
                if compiled:
                    row["graph_breaks"] = sum(counters["graph_break"].values())
                    row["graph_break_reasons"] = dict(counters["graph_break"])
            row["abs_loss_diff"] = abs(row["compiled_loss"] - row["eager_loss"])
            results[precision] = row
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    from conftest import free_port  # noqa: E402 (tests/ on the path below)

    results = mp.Manager().dict()
    mp.spawn(measure, args=(free_port(), args.steps, results), nprocs=1, join=True)
    results = dict(results)
    for precision, row in results.items():
        print(f"{precision}: graph breaks {row['graph_breaks']}, compile (first step) {row['compiled_first_step_s']} s, "
              f"step {row['eager_step_ms']} ms eager / {row['compiled_step_ms']} ms compiled, "
              f"|loss diff| {row['abs_loss_diff']:.3g}")
    print(json.dumps({"torch": torch.__version__, **results}))


if __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    main()
