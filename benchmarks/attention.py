"""One attention layer, fwd+bwd, over packed documents: peak memory and time versus sequence length.

    python benchmarks/attention.py [--quick] [--backend auto] [--lengths 2048 4096 8192 16384]
    python benchmarks/attention.py --gpu        # TFLOP/s of flash-attn vs SDPA vs flex at 8k, bf16

CPU part (the issue's targets): a GroupedQueryAttention layer (d_model 512, 8 query heads, 2 KV
heads, head_dim 64), global and local (window 1024) kinds, each sequence packed with four documents
of unequal lengths (40/30/20/10 %), at 2k/4k/8k/16k tokens. Every measurement runs in a fresh
subprocess: the layer's own peak memory is the growth of the process's peak resident set during
one fwd+bwd (ru_maxrss after, minus the resident set just before), so the interpreter, torch and
the inputs are not counted. Time is the fastest of the timed repeats after one warm-up (the fastest,
not the median, because the 2 cores are shared and disturbances only ever add time).

Targets: global peak memory at 16k / at 8k <= 2.2 (linear), local time at 16k / at 8k <= 2.3.
The last line is one JSON object with ``peak_mem_ratio_16k_over_8k`` (global layer) and
``local_time_ratio_16k_over_8k``, plus the raw figures.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
D_MODEL, N_HEADS, N_KV_HEADS, WINDOW = 512, 8, 2, 1024
DOC_FRACTIONS = (0.4, 0.3, 0.2, 0.1)


def measure(kind: str, seq_len: int, backend: str, repeats: int) -> dict:
    """Runs in a child process: one layer, one packed batch; returns peak MiB and median seconds."""
    import resource

    import torch

    sys.path.insert(0, str(REPO))
    from constellation_kit.model import GroupedQueryAttention, SequenceLayout

    torch.manual_seed(0)
    layer = GroupedQueryAttention(
        D_MODEL, 0, n_heads=N_HEADS, n_kv_heads=N_KV_HEADS, layer_pattern="G" if kind == "global" else "L",
        window=WINDOW, backend=backend,
    )
    lengths = [int(f * seq_len) for f in DOC_FRACTIONS]
    lengths[0] += seq_len - sum(lengths)
    document_ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]  # (1, T)
    x = torch.randn(1, seq_len, D_MODEL, requires_grad=True)

    def step() -> None:
        layout = SequenceLayout.from_document_ids(document_ids)  # per forward, as in training
        layer(x, layout).square().mean().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    def rss_kib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() // 1024

    before = rss_kib()
    step()
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"peak_mib": round(peak_mib, 1), "seconds": round(min(times), 4)}


def run_child(kind: str, seq_len: int, backend: str, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(seq_len), backend, str(repeats)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def gpu_tflops() -> dict:  # pragma: no cover - needs CUDA
    """Causal attention at 8k, head_dim 128, bf16, fwd+bwd TFLOP/s per backend (4 * B*H*T^2*hd / 2 * 3.5)."""
    import torch

    from constellation_kit.model.attention_backends import BACKENDS
    from constellation_kit.model.layout import SequenceLayout

    batch, heads, seq_len, head_dim = 2, 16, 8192, 128
    layout = SequenceLayout.single_document(batch, seq_len, torch.device("cuda"))
    # Causal fwd = 2 matmuls * 2 flops * B*H*T^2*hd / 2; bwd = 2.5x fwd (FlashAttention-2 paper's count).
    flops = 4 * batch * heads * seq_len**2 * head_dim / 2 * 3.5
    results = {}
    for name in ("flash_attn", "sdpa", "flex"):
        q = torch.randn(batch, heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn_like(q, requires_grad=True) for _ in range(2))
        backend = BACKENDS[name]
        if backend.unavailable_reason(q, 0.0):
            results[name] = None
            continue
        for _ in range(3):
            backend(q, k, v, layout, None, 0.0).sum().backward()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            backend(q, k, v, layout, None, 0.0).sum().backward()
        torch.cuda.synchronize()
        results[name] = round(flops * 10 / (time.perf_counter() - start) / 1e12, 1)
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, seq_len, backend, repeats = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        print(json.dumps(measure(kind, seq_len, backend, repeats)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only 8k and 16k (the ratios), two repeats: under 90 s")
    parser.add_argument("--backend", default="auto", help="attention backend (auto resolves to sdpa on CPU)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--gpu", action="store_true", help="also measure TFLOP/s at 8k on CUDA")
    args = parser.parse_args()
    repeats = 2 if args.quick else 3
    if args.quick:
        args.lengths = [8192, 16384]
    start = time.perf_counter()
    rows = {}
    print(f"{'kind':8s} {'T':>6s} {'peak MiB':>10s} {'seconds':>9s}")
    for kind in ("global", "local"):
        for seq_len in args.lengths:
            rows[(kind, seq_len)] = run_child(kind, seq_len, args.backend, repeats)
            r = rows[(kind, seq_len)]
            print(f"{kind:8s} {seq_len:6d} {r['peak_mib']:10.1f} {r['seconds']:9.3f}", flush=True)
    result = {"backend": args.backend, "window": WINDOW, "wall_s": round(time.perf_counter() - start, 1)}
    if 8192 in args.lengths and 16384 in args.lengths:
        result["peak_mem_ratio_16k_over_8k"] = round(rows[("global", 16384)]["peak_mib"] / rows[("global", 8192)]["peak_mib"], 3)
        result["local_time_ratio_16k_over_8k"] = round(rows[("local", 16384)]["seconds"] / rows[("local", 8192)]["seconds"], 3)
        result["local_peak_mem_ratio_16k_over_8k"] = round(rows[("local", 16384)]["peak_mib"] / rows[("local", 8192)]["peak_mib"], 3)
        result["global_time_ratio_16k_over_8k"] = round(rows[("global", 16384)]["seconds"] / rows[("global", 8192)]["seconds"], 3)
    result["points"] = {f"{kind}_{t}": r for (kind, t), r in rows.items()}
    if args.gpu:
        result["gpu_tflops_8k_bf16_hd128"] = gpu_tflops()
    else:
        result["gpu"] = "not measured: no GPU available"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
