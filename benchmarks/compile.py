"""Graph breaks per transformer block, and compiled-vs-eager training step time, on CPU.

    python benchmarks/compile.py [--steps N] [--seq-len T]

For each block kind (dense and MoE; local and global attention; packed documents), with and
without activation checkpointing, dynamo's graph breaks are counted (``torch._dynamo.explain``,
0 means the block is one graph), then one forward+backward of a small 4-block model is timed
eagerly and with ``torch.compile`` per block (inductor), side by side in one process. Times are
medians over ``--steps`` after one warm-up (compilation is excluded and reported separately).
Prints a table, then one JSON line.
"""

import argparse
import json
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, SequenceLayout, TopKRouter, Transformer

VOCAB, D_MODEL = 512, 128


def network(activation_checkpointing: bool, compile: bool) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(
        VOCAB,
        d_model=D_MODEL,
        n_layers=4,
        attention=partial(GroupedQueryAttention, n_heads=4, n_kv_heads=2, backend="sdpa", layer_pattern="LG", window=128),
        moe=partial(MoEFeedForward, num_experts=8, expert_hidden_dim=128, router=partial(TopKRouter, top_k=2)),
        moe_every=2,  # blocks: dense-local, MoE-global, dense-local, MoE-global
    )
    for index, block in enumerate(model.blocks):
        block = checkpoint_wrapper(block) if activation_checkpointing else block
        model.blocks[index] = torch.compile(block) if compile else block
    return model


def inputs(seq_len: int):
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, seq_len), generator=generator)
    third = seq_len // 3
    lengths = (third, seq_len - 2 * third, third)
    document_ids = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths)).expand(2, seq_len)
    return tokens, document_ids


def step(model: Transformer, tokens, document_ids) -> float:
    start = time.perf_counter()
    output = model(tokens, SequenceLayout.from_document_ids(document_ids))
    loss = F.cross_entropy(model.logits(output.hidden)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=1024)
    args = parser.parse_args()
    tokens, document_ids = inputs(args.seq_len)
    layout = SequenceLayout.from_document_ids(document_ids)
    results: dict = {"graph_breaks": {}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, B=2, T={args.seq_len}, 3 documents a row")
    for activation_checkpointing in (False, True):
        model = network(activation_checkpointing, compile=False)
        x = model.embed(tokens)
        for index, block in enumerate(model.blocks):
            torch._dynamo.reset()
            breaks = torch._dynamo.explain(block)(x, layout).graph_break_count
            inner = block._checkpoint_wrapped_module if activation_checkpointing else block
            kind = f"{'moe' if isinstance(inner.feed_forward, MoEFeedForward) else 'dense'}-{inner.attention.kind}"
            key = f"block{index}:{kind}{'+ac' if activation_checkpointing else ''}"
            results["graph_breaks"][key] = breaks
            print(f"graph breaks {key:28} {breaks}")
    for activation_checkpointing in (False, True):
        torch._dynamo.reset()
        times = {}
        for compile in (False, True):
            model = network(activation_checkpointing, compile)
            warmup = step(model, tokens, document_ids)  # compiles, when compiling
            times[compile] = statistics.median(step(model, tokens, document_ids) for _ in range(args.steps))
            if compile:
                results[f"compile_s{'_ac' if activation_checkpointing else ''}"] = round(warmup, 1)
        tag = "_ac" if activation_checkpointing else ""
        results[f"eager_ms{tag}"] = round(times[False] * 1e3, 1)
        results[f"compiled_ms{tag}"] = round(times[True] * 1e3, 1)
        results[f"compiled_over_eager{tag}"] = round(times[True] / times[False], 3)
        print(f"step ms (activation_checkpointing={activation_checkpointing}): eager {times[False] * 1e3:.1f}, "
              f"compiled {times[True] * 1e3:.1f}, ratio {times[True] / times[False]:.3f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
