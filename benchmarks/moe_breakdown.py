"""Where the fine-shape MoE layer's time goes, against the dense SwiGLU of equal active FLOPs.

    python benchmarks/moe_breakdown.py [--threads N] [--rounds 5]

Profiles fwd+bwd of both layers of ``benchmarks/moe.py``'s fine shape (T = 4096, d_model = 512,
E = 64, K = 8, expert hidden 128; dense hidden 1024) with ``torch.profiler`` and sums each layer's
self time by kind of op: matmuls, gathers and scatter-adds, elementwise, everything else. Then it
times the routed experts' six matmul shapes on their own, operands and weights hot in cache, 64
times each (one per expert): the same multiply-adds as in the layer, without the cache misses.
The three take turns, one step each per round, and each figure is the median over rounds: on a
shared VM the same work swings by a third from one minute to the next.

The difference between the in-layer and the hot-cache matmul time is what streaming the experts'
weights costs (E/K = 8 times the dense layer's, read forward and backward, gradients written);
the gathers and scatter-adds are the routing's own traffic, which a dense layer has none of. Both
are memory-bound, so they set the MoE/dense ratio's floor on a CPU. "other" is mostly per-op
cost: the routed experts run ~1,500 ops a step (a Python loop over 64 experts, 2-4 µs each, and
as much again for the profiler's own bookkeeping) against the dense layer's ~30, so the profiled
ratio reads a few percent above ``benchmarks/moe.py``'s. Prints a table, then one JSON line
(milliseconds per step).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moe import D_MODEL, SHAPES, TOKENS, fwd_bwd, moe_layer  # noqa: E402  (this directory's script)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from constellation_kit.model import GroupedMMDispatch, SwiGLU  # noqa: E402

KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
    "gather/scatter-add": ("aten::index_select", "aten::index_add_", "aten::scatter_add_", "aten::index"),
    "elementwise": ("aten::silu", "aten::silu_backward", "aten::mul", "aten::mul_", "aten::add_", "aten::add",
                    "aten::cat", "aten::linalg_vecdot", "aten::sum", "aten::fill_", "aten::zero_", "aten::copy_"),
}


def profile_by_kind(layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict[str, float]:
    """Self milliseconds of each kind of op in one forward + backward of ``layer``."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fwd_bwd(layer, x, grad)
    totals = dict.fromkeys([*KINDS, "other", "total"], 0.0)
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1e3
        kind = next((k for k, names in KINDS.items() if event.key in names), "other")
        totals[kind] += ms
        totals["total"] += ms
    return totals


def median_by_kind(profiles: list[dict[str, float]]) -> dict[str, float]:
    """Each kind's median over rounds of :func:`profile_by_kind`."""
    return {kind: statistics.median(p[kind] for p in profiles) for kind in profiles[0]}


def hot_expert_matmuls(num_experts: int, top_k: int, hidden: int, repeats: int = 5) -> float:
    """Milliseconds for the six per-expert matmuls of fwd+bwd, 64 experts' worth, operands in cache."""
    n = TOKENS * top_k // num_experts  # rows per expert when balanced
    x, grad = torch.randn(n, D_MODEL), torch.randn(n, D_MODEL)
    gate_up, down = torch.randn(D_MODEL, 2 * hidden), torch.randn(hidden, D_MODEL)
    h, g2 = torch.randn(n, hidden), torch.randn(n, 2 * hidden)
    products = [(x, gate_up), (h, down), (grad, down.t()), (h.t(), grad), (x.t(), g2), (g2, gate_up.t())]
    outs = [torch.empty(a.shape[0], b.shape[1]) for a, b in products]
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        for (a, b), out in zip(products, outs):
            torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) * 1e3 * num_experts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (dense step, MoE step, hot matmuls)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = SHAPES["fine"]
    E, K, H = cfg["num_experts"], cfg["top_k"], cfg["hidden"]
    torch.manual_seed(1)
    x = torch.randn(1, TOKENS, D_MODEL, requires_grad=True)
    grad = torch.randn(1, TOKENS, D_MODEL)
    torch.manual_seed(0)
    layers = {"dense": SwiGLU(D_MODEL, hidden_dim=K * H), "moe": moe_layer(E, K, H, GroupedMMDispatch())}
    for layer in layers.values():
        fwd_bwd(layer, x, grad)  # warm-up
    rounds = {"dense": [], "moe": [], "hot": []}
    for _ in range(args.rounds):
        for name, layer in layers.items():
            rounds[name].append(profile_by_kind(layer, x, grad))
        rounds["hot"].append(hot_expert_matmuls(E, K, H))
    dense, moe = median_by_kind(rounds["dense"]), median_by_kind(rounds["moe"])
    hot = statistics.median(rounds["hot"])

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fine shape, ms per fwd+bwd "
          f"(profiled, median of {args.rounds} rounds)")
    print(f"{'kind':20} {'dense':>8} {'MoE':>8} {'MoE - dense':>12}")
    for kind in dense:
        print(f"{kind:20} {dense[kind]:8.1f} {moe[kind]:8.1f} {moe[kind] - dense[kind]:12.1f}")
    print(f"the experts' matmuls with operands and weights in cache: {hot:.1f} ms "
          f"(in the layer {moe['matmul']:.1f}: {moe['matmul'] - hot:.1f} ms of weight and operand traffic)")
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "dense_ms": {k: round(v, 1) for k, v in dense.items()},
        "moe_ms": {k: round(v, 1) for k, v in moe.items()},
        "moe_matmul_hot_cache_ms": round(hot, 1),
        "moe_over_dense_profiled": round(moe["total"] / dense["total"], 3),
    }))


if __name__ == "__main__":
    sys.exit(main())
