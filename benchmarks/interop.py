"""Export and import cost: time and peak memory for the small recipe's model, and the Mixtral-8x7B-shaped
model's footprint computed on the meta device.

    python benchmarks/interop.py [--skip_small]

Each measured step runs in a fresh process, so its peak resident memory (``ru_maxrss``) is its own:
- ``export_from_memory``: a materialised network written as safetensors (what ``export_network`` does);
- ``export_from_shards``: a sharded (DCP) checkpoint exported tensor by tensor, the network on meta
  (what ``constellation-kit export`` does for an FSDP2 checkpoint): peak should be far below the model;
- ``import``: a meta-device network materialised and filled from the safetensors (``init_from``).
The 8x7B figures are exact byte counts from the tensor maps (nothing is allocated).
Prints one JSON object last.
"""

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

MIB = 2**20


def small_network(device: str) -> nn.Module:
    """recipes/small.yaml's text network (d_model 512, 8 layers, 16 experts top-2, vocab 8192)."""
    from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, SwiGLU, Transformer

    with torch.device(device):
        return Transformer(8192, d_model=512, n_layers=8, tie_embeddings=True,
                           attention=partial(GroupedQueryAttention, n_heads=8, n_kv_heads=4),
                           feed_forward=partial(SwiGLU, hidden_dim=1024),
                           moe=partial(MoEFeedForward, num_experts=16, expert_hidden_dim=512),
                           norm=partial(nn.RMSNorm, eps=1e-6))


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / MIB


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prepare(workdir: str, queue) -> None:
    from constellation_kit.interop import export_network

    torch.manual_seed(0)
    network = small_network("cpu")
    dcp.save({"state_dict": {f"network.{k}": v for k, v in network.state_dict().items()}},
             checkpoint_id=Path(workdir) / "sharded", no_dist=True)
    export_network(network, Path(workdir) / "reference")
    queue.put({"params": sum(p.numel() for p in network.parameters())})


def _export_from_memory(workdir: str, queue) -> None:
    from constellation_kit.interop import export_network

    network = small_network("cpu")
    before = rss_mib()
    start = time.perf_counter()
    export_network(network, Path(workdir) / "from-memory")
    queue.put({"seconds": time.perf_counter() - start, "rss_before_mib": before, "peak_mib": peak_mib()})


def _export_from_shards(workdir: str, queue) -> None:
    from constellation_kit.interop.checkpoint_source import _sharded_source
    from constellation_kit.interop.export import export_network

    network = small_network("meta")
    before = rss_mib()
    start = time.perf_counter()
    export_network(network, Path(workdir) / "from-shards", source=_sharded_source(Path(workdir) / "sharded"),
                   max_shard_bytes=64 * MIB)
    queue.put({"seconds": time.perf_counter() - start, "rss_before_mib": before, "peak_mib": peak_mib()})


def _import(workdir: str, queue) -> None:
    from constellation_kit.interop import load_pretrained

    network = small_network("meta")
    before = rss_mib()
    start = time.perf_counter()
    network.to_empty(device="cpu")
    load_pretrained(network, Path(workdir) / "reference")
    queue.put({"seconds": time.perf_counter() - start, "rss_before_mib": before, "peak_mib": peak_mib()})


def in_fresh_process(target, workdir: str) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(workdir, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


MIXTRAL_8X7B = {  # mistralai/Mixtral-8x7B-v0.1's config.json (the published values)
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "num_experts_per_tok": 2, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
    "sliding_window": None, "tie_word_embeddings": False, "hidden_act": "silu",
}


def mixtral_8x7b_on_meta() -> dict:
    from constellation_kit.interop.families import choose_family
    from constellation_kit.interop.init_from import config_mismatches
    from constellation_kit.interop.spec import describe
    from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, Transformer

    start = time.perf_counter()
    with torch.device("meta"):
        network = Transformer(32000, d_model=4096, n_layers=32, pad_vocab_to=64,
                              attention=partial(GroupedQueryAttention, n_heads=32, n_kv_heads=8, rope_base=1e6),
                              moe=partial(MoEFeedForward, num_experts=8, expert_hidden_dim=14336),
                              norm=partial(nn.RMSNorm, eps=1e-5))
    spec = describe(network)
    family = choose_family(spec)
    mismatches = config_mismatches(network, MIXTRAL_8X7B, family)
    params = dict(network.named_parameters())
    hf_tensors, hf_bytes, largest = 0, 0, 0
    for tensor_map in family.tensor_maps(spec):
        kit = params[tensor_map.kit]
        rows = tensor_map.rows or kit.shape[0]
        numel = kit.numel() // kit.shape[0] * rows
        hf_tensors += len(tensor_map.hf_names())
        hf_bytes += 2 * numel  # bf16
        largest = max(largest, 2 * numel // len(tensor_map.hf_names()))
    return {
        "architecture": family.architecture,
        "config_mismatches_vs_published": mismatches,
        "params": sum(p.numel() for p in params.values()),
        "tensors": hf_tensors,
        "bf16_bytes_on_disk_gib": round(hf_bytes / 2**30, 2),
        "largest_tensor_mib": round(largest / MIB, 1),
        "shards_at_5gb": -(-hf_bytes // (5 * 2**30)),
        "seconds_to_map_on_meta": round(time.perf_counter() - start, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip_small", action="store_true", help="only the meta-device 8x7B figures")
    args = parser.parse_args()
    result = {"mixtral_8x7b": mixtral_8x7b_on_meta()}
    if not args.skip_small:
        with tempfile.TemporaryDirectory() as workdir:
            small = in_fresh_process(_prepare, workdir)
            small["fp32_mib"] = round(small["params"] * 4 / MIB, 1)
            for name, target in [("export_from_memory", _export_from_memory),
                                 ("export_from_shards", _export_from_shards), ("import", _import)]:
                measured = in_fresh_process(target, workdir)
                small[name] = {"seconds": round(measured["seconds"], 2),
                               "rss_before_mib": round(measured["rss_before_mib"]),
                               "peak_rss_mib": round(measured["peak_mib"]),
                               "peak_above_start_mib": round(measured["peak_mib"] - measured["rss_before_mib"])}
            small["disk_mib"] = round(sum(p.stat().st_size for p in (Path(workdir) / "reference").glob("*.safetensors"))
                                      / MIB, 1)
        result["small"] = small
    print(json.dumps(result))


if __name__ == "__main__":
    main()
