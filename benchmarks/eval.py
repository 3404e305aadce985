"""Evaluation throughput on CPU: generation tokens/s with and without the KV cache; scoring continuations/s.

    python benchmarks/eval.py [--prompt_len 64] [--new_tokens 128] [--batch_sizes 1 8] [--threads N] \
        [--ckpt_path runs/tiny/tiny/<run id>/checkpoints/last.ckpt --items 64 --batch_size 16]

Generation: the tiny recipe's language model (d_model 128, 4 blocks of grouped-query attention with
4 query and 2 key/value heads, 8-expert top-2 MoE, a 2048-token vocabulary), randomly initialised:
throughput does not depend on the weights. Greedy decoding of ``new_tokens`` tokens after a
``prompt_len``-token prompt, timed with the KV cache (one new token per step) and without (the
whole prefix re-run every step), side by side in one process, best of ``--repeats``. Every step
draws exactly one token per row (no EOS), so both sides do the same number of steps, and the test
suite holds the two to the same tokens. Reported as new tokens per second over the batch.

Scoring: the same multiple-choice requests (the built-in copying suite: ``items`` x 4 continuations)
go through ``lm.loglikelihood`` of :class:`~constellation_kit.eval.harness.ConstellationLM` on the
checkpoint, and of lm-eval's ``HFLM`` around a randomly initialised transformers ``MixtralForCausalLM``
of the checkpoint's size and shape (width, layers, heads, KV heads, experts, top-k, expert width,
vocabulary, tied embeddings; weights differ, cost does not), with the run's tokenizer. Side by side in one
process, fp32, the same batch size. Continuations per second, higher is better.

The last line printed is one JSON object.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial

import torch


# -- generation: tokens/s with and without the KV cache --------------------------------------------


def tiny_language_model(layer_pattern: str = "G", window: int = 32, seed: int = 0):
    """The tiny recipe's network shape (recipes/tiny.yaml), random weights, in eval mode."""
    from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, SwiGLU, TopKRouter, Transformer
    from constellation_kit.train import LanguageModel

    torch.manual_seed(seed)
    network = partial(
        Transformer, d_model=128, n_layers=4, dropout=0.0, tie_embeddings=True,
        attention=partial(GroupedQueryAttention, n_heads=4, n_kv_heads=2, layer_pattern=layer_pattern, window=window),
        feed_forward=partial(SwiGLU, hidden_dim=384),
        moe=partial(MoEFeedForward, num_experts=8, expert_hidden_dim=192, router=partial(TopKRouter, top_k=2)),
        moe_every=1,
    )
    module = LanguageModel(network, vocab_size=2048)
    module.configure_model()
    return module.eval()


def time_generation(module, prompts: list[list[int]], new_tokens: int, use_cache: bool, repeats: int) -> float:
    """Best wall time (s) of greedy generation of ``new_tokens`` per row."""
    from constellation_kit.eval.generation import generate

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate(module, prompts, max_new_tokens=new_tokens, use_cache=use_cache)
        best = min(best, time.perf_counter() - start)
        assert all(len(row) == new_tokens for row in out)
    return best


def generation(args: argparse.Namespace) -> dict:
    """New tokens/s with and without the cache, per batch size, and the speed-up."""
    module = tiny_language_model(args.layer_pattern)
    generator = torch.Generator().manual_seed(0)
    results = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "layer_pattern": args.layer_pattern}
    time_generation(module, [[1] * 8], 4, True, 1)  # warm-up: first-call allocations and kernel selection
    for batch in args.batch_sizes:
        prompts = torch.randint(3, 2048, (batch, args.prompt_len), generator=generator).tolist()
        cached = time_generation(module, prompts, args.new_tokens, True, args.repeats)
        uncached = time_generation(module, prompts, args.new_tokens, False, args.repeats)
        results[f"batch{batch}"] = figures = {
            "cached_tokens_per_s": round(batch * args.new_tokens / cached, 1),
            "uncached_tokens_per_s": round(batch * args.new_tokens / uncached, 1),
            "speedup": round(uncached / cached, 2),
        }
        print(f"generation  batch {batch:3d}  prompt {args.prompt_len}  new {args.new_tokens}  "
              f"cached {figures['cached_tokens_per_s']:9.1f} tok/s  uncached {figures['uncached_tokens_per_s']:9.1f} tok/s  "
              f"x{figures['speedup']}", file=sys.stderr, flush=True)
    return results


# -- scoring: continuations/s of the harness adapter against lm-eval's hf model (evalscore's part) --


def scoring_requests(items: int):
    """lm-eval Instances: each copying question's four (context, " " + choice) pairs."""
    from lm_eval.api.instance import Instance

    from constellation_kit.eval import CopyingSuite

    task = CopyingSuite(num_items=items, seed=7).build()
    return [Instance("loglikelihood", {}, (item.context, item.delimiter + choice), i)
            for item in task.items for i, choice in enumerate(item.choices)]


def mixtral_like(trained, directory: str) -> str:
    """A random MixtralForCausalLM of the checkpoint's shape and its tokenizer, saved for lm-eval's ``hf`` model."""
    from transformers import MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast

    network = trained.config["model"]["init_args"]["network"]["init_args"]
    attention = network["attention"]["init_args"]
    moe = network["moe"]["init_args"]
    vocab = trained.tokenizer.get_vocab_size()
    config = MixtralConfig(
        vocab_size=vocab, hidden_size=network["d_model"], num_hidden_layers=network["n_layers"],
        num_attention_heads=attention["n_heads"], num_key_value_heads=attention["n_kv_heads"],
        intermediate_size=moe["expert_hidden_dim"], num_local_experts=moe["num_experts"],
        num_experts_per_tok=moe["router"]["init_args"]["top_k"], tie_word_embeddings=network.get("tie_embeddings", False),
        max_position_embeddings=4096, rope_theta=attention.get("rope_base", 10000.0),
    )
    torch.manual_seed(0)
    MixtralForCausalLM(config).save_pretrained(directory)
    eos = "<|endoftext|>"
    PreTrainedTokenizerFast(tokenizer_object=trained.tokenizer, eos_token=eos, pad_token=eos).save_pretrained(directory)
    return directory


def scoring(args: argparse.Namespace) -> dict:
    """Continuations/s of the adapter and of lm-eval's hf model on the same requests, side by side."""
    if args.ckpt_path is None:
        return {"not_run": "scoring needs --ckpt_path (a checkpoint written by constellation-kit fit)"}
    from lm_eval.models.huggingface import HFLM

    from constellation_kit.eval.harness import ConstellationLM

    from constellation_kit.trained_model import load_trained_model

    trained = load_trained_model(args.ckpt_path)
    requests = scoring_requests(args.items)
    ours = ConstellationLM(trained=trained, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as directory:
        hf = HFLM(pretrained=mixtral_like(trained, directory), device="cpu", batch_size=args.batch_size, dtype="float32")
        timings: dict[str, list[float]] = {"constellation_kit": [], "hf": []}
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            for name, lm in (("constellation_kit", ours), ("hf", hf)):
                started = time.perf_counter()
                lm.loglikelihood(requests, disable_tqdm=True)
                timings[name].append(time.perf_counter() - started)
    best = {name: min(times) for name, times in timings.items()}
    print(f"scoring  {len(requests)} continuations  adapter {len(requests) / best['constellation_kit']:.1f}/s  "
          f"hf {len(requests) / best['hf']:.1f}/s", file=sys.stderr, flush=True)
    return {
        "continuations": len(requests),
        "batch_size": args.batch_size,
        "adapter_continuations_per_s": round(len(requests) / best["constellation_kit"], 1),
        "hf_continuations_per_s": round(len(requests) / best["hf"], 1),
        "adapter_over_hf": round(best["hf"] / best["constellation_kit"], 2),
    }


SECTIONS: list[Callable[[argparse.Namespace], dict]] = [generation, scoring]
"""Each section measures one thing and returns its figures."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt_len", type=int, default=64, help="generation: prompt tokens per row")
    parser.add_argument("--new_tokens", type=int, default=128, help="generation: new tokens per row")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8], help="generation: rows generated together")
    parser.add_argument("--layer_pattern", default="G", help="generation: G, tiny's all-global layers; e.g. LLLG for local ones")
    parser.add_argument("--ckpt_path", default=None, help="scoring: a checkpoint written by constellation-kit fit")
    parser.add_argument("--items", type=int, default=64, help="scoring: copying questions (4 continuations each)")
    parser.add_argument("--batch_size", type=int, default=16, help="scoring: rows per forward call, both models")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per side; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures: dict = {"load_average": os.getloadavg()[0], "threads": torch.get_num_threads()}
    print(f"torch {torch.__version__}, {figures['threads']} threads, fp32 CPU, load {figures['load_average']:.1f}", file=sys.stderr)
    for section in SECTIONS:
        figures[section.__name__] = section(args)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
