"""Streaming loader throughput from shards (local and a loopback S3 server), tiny start-up, and the XL node arithmetic.

    python benchmarks/data_streaming.py [--documents 4000] [--batches 40]

1. Tokens per second out of :class:`StreamingDataModule`'s training loader (packed rows, collated),
   with 0, 1 and 2 loader workers: a text source, and a 3:1 mixture of text and captioned media
   (48 px PNGs resized to 32 px, 0.5 s clips), from local shards and from moto's S3 server on
   127.0.0.1 (chunks downloaded into the local cache as read; the first pass is cold).
2. Start-up of the tiny recipe's data (``MultimodalDataModule``, in memory: tokenise, pack, scan
   the media), cold and warm cache, against the streaming module's (open the index, first batch).
3. What one 8xH100 node needs at XL's step rate: ``plan`` on recipes/xl.yaml at 1 node x 8 GPUs
   gives the step time; tokens per step / step time is the loader's target, compared with (1).

Prints a table; the last line is one JSON object.
"""

import argparse
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "data"))

from shard_fixtures import media_items, s3_server, text_items, tokenizer_json, write_source  # noqa: E402

import yaml  # noqa: E402

from constellation_kit.data import (  # noqa: E402
    ByteLevelBPE,
    MultimodalDataModule,
    PythonStdlibSource,
    ShardSource,
    StreamingDataModule,
)

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}
SEQ_LEN, BATCH = 512, 8


def streaming(paths: list[str], weights: list[float], workers: int, **extra) -> StreamingDataModule:
    sources = [ShardSource(p, w) for p, w in zip(paths, weights)]
    return StreamingDataModule(
        sources, image_backbone_kwargs=TINY_VIT, image_size=32, image_tokens=16, audio_tokens=4, audio_seconds=0.5,
        seq_len=SEQ_LEN, global_batch_size=BATCH, val_fraction=0.05, num_workers=workers, **extra,
    )


def tokens_per_second(dm: StreamingDataModule, batches: int) -> float:
    """Tokens per second over ``batches`` batches, after the first (worker start-up) is out."""
    loader = iter(dm.train_dataloader())
    next(loader)
    start = time.perf_counter()
    for batch in itertools.islice(loader, batches):
        dm.on_before_batch_transfer(batch, 0)
    return batches * BATCH * SEQ_LEN / (time.perf_counter() - start)


def tiny_startup(cache: Path) -> float:
    """Seconds from nothing to the first training batch of tiny.yaml's data (MultimodalDataModule)."""
    # tiny.yaml's data section, built alone (the recipe's model and trainer are not needed here).
    data = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())["data"]["init_args"]
    start = time.perf_counter()
    dm = MultimodalDataModule(
        source=PythonStdlibSource(**data["source"]["init_args"]), manifest=None,
        builtin_images=data["builtin_images"], builtin_audio=data["builtin_audio"],
        tokenizer=ByteLevelBPE(**data["tokenizer"]["init_args"]),
        **{k: data[k] for k in ("image_backbone", "image_backbone_kwargs", "image_size", "image_augmentation",
                                "image_tokens", "audio_tokens", "audio_seconds", "seq_len", "global_batch_size",
                                "val_fraction", "seed")},
        cache_dir=str(cache),
    )
    dm.prepare_data()
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    return time.perf_counter() - start


def stream_startup(paths: list[str]) -> float:
    start = time.perf_counter()
    dm = streaming(paths, [3.0, 1.0], 0)
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    return time.perf_counter() - start


def xl_node_target() -> dict:
    """``plan`` on xl.yaml at one node of 8 H100s: step time and tokens per step."""
    out = subprocess.run(
        [sys.executable, "-m", "constellation_kit.cli", "plan", "--config", str(REPO / "recipes" / "xl.yaml"),
         "--num_nodes", "1", "--devices", "8"], capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout
    tokens = int(re.search(r"tokens per step\s+([\d,]+)", out).group(1).replace(",", ""))
    step = float(re.search(r"step time\s+([\d.]+) s", out).group(1))
    return {"tokens_per_step": tokens, "step_time_s": step, "tokens_per_s_node": tokens / step,
            "tokens_per_s_gpu": tokens / step / 8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=4000)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    results: dict = {"seq_len": SEQ_LEN, "micro_batch": BATCH}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = tokenizer_json(root / "cache")
        write_source(root / "corpus" / "web", text_items(args.documents, 10, 290, seed=0, min_len=50, max_len=1000),
                     tokenizer, chunk_size=256)
        write_source(root / "corpus" / "caps", media_items(args.documents // 4, 10, 290, seed=1), tokenizer,
                     chunk_size=128)
        local = {"text": [str(root / "corpus" / "web")], "mixed": [str(root / "corpus" / "web"), str(root / "corpus" / "caps")]}
        for name, paths in local.items():
            for workers in (0, 1, 2):
                rate = tokens_per_second(streaming(paths, [3.0, 1.0][: len(paths)], workers), args.batches)
                results[f"local_{name}_w{workers}_tokens_per_s"] = round(rate)
                print(f"local {name:5s} workers={workers}: {rate:12,.0f} tokens/s")
        with s3_server(root / "corpus") as (url, endpoint):
            remote = {"text": [f"{url}/web"], "mixed": [f"{url}/web", f"{url}/caps"]}
            for name, paths in remote.items():
                for workers in (0, 1, 2):
                    dm = streaming(paths, [3.0, 1.0][: len(paths)], workers, storage_options={"endpoint_url": endpoint},
                                   cache_dir=str(root / f"s3cache-{name}-{workers}"))  # cold: every chunk downloaded
                    rate = tokens_per_second(dm, args.batches)
                    results[f"s3_{name}_w{workers}_tokens_per_s"] = round(rate)
                    print(f"s3    {name:5s} workers={workers}: {rate:12,.0f} tokens/s")
        results["tiny_startup_cold_s"] = round(tiny_startup(root / "tiny-cache"), 2)
        results["tiny_startup_warm_s"] = round(tiny_startup(root / "tiny-cache"), 2)
        results["stream_startup_s"] = round(stream_startup(local["mixed"]), 2)
        print(f"tiny data start-up: cold {results['tiny_startup_cold_s']} s, warm {results['tiny_startup_warm_s']} s; "
              f"streaming start-up (index + first batch): {results['stream_startup_s']} s")
    target = xl_node_target()
    results.update({f"xl_node_{k}": round(v, 2) for k, v in target.items()})
    per_worker = results["local_mixed_w1_tokens_per_s"]
    results["xl_workers_per_gpu_needed_at_measured_rate"] = round(target["tokens_per_s_gpu"] / per_worker, 3)
    print(f"XL on 1 node x 8 H100: {target['tokens_per_step']:,} tokens per {target['step_time_s']:.1f} s step = "
          f"{target['tokens_per_s_node']:,.0f} tokens/s per node, {target['tokens_per_s_gpu']:,.0f} per GPU; "
          f"one loader worker here streams {per_worker:,.0f} (mixed)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
