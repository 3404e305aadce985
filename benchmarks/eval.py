"""Evaluation throughput on CPU: the harness adapter's scoring against lm-eval's own ``hf`` model.

    python benchmarks/eval.py --ckpt_path runs/tiny/tiny/<run id>/checkpoints/last.ckpt [--items 64] [--batch_size 16]

Scoring: the same multiple-choice requests (the built-in copying suite: ``items`` x 4 continuations)
go through ``lm.loglikelihood`` of :class:`~constellation_kit.eval.harness.ConstellationLM` on the
checkpoint, and of lm-eval's ``HFLM`` around a randomly initialised transformers ``MixtralForCausalLM``
of the checkpoint's size and shape (width, layers, heads, KV heads, experts, top-k, expert width,
vocabulary, tied embeddings; weights differ, cost does not), with the run's tokenizer. Side by side in one
process, fp32, the same batch size. Continuations per second, higher is better.

Each measurement is one function returning a dict; :data:`SECTIONS` runs them in order and the
script prints one JSON object of all of them last. Generation tokens/s (with and without the KV
cache) belongs beside scoring as another section.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from constellation_kit.eval import CopyingSuite
from constellation_kit.trained_model import TrainedModel, load_trained_model


def scoring_requests(items: int):
    """lm-eval Instances: each copying question's four (context, " " + choice) pairs."""
    from lm_eval.api.instance import Instance

    task = CopyingSuite(num_items=items, seed=7).build()
    return [Instance("loglikelihood", {}, (item.context, item.delimiter + choice), i)
            for item in task.items for i, choice in enumerate(item.choices)]


def mixtral_like(trained: TrainedModel, directory: str) -> str:
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
    from lm_eval.models.huggingface import HFLM

    from constellation_kit.eval.harness import ConstellationLM

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
    return {
        "continuations": len(requests),
        "batch_size": args.batch_size,
        "adapter_continuations_per_s": round(len(requests) / best["constellation_kit"], 1),
        "hf_continuations_per_s": round(len(requests) / best["hf"], 1),
        "adapter_over_hf": round(best["hf"] / best["constellation_kit"], 2),
    }


SECTIONS: list[Callable[[argparse.Namespace], dict]] = [scoring]
"""Each section measures one thing and returns its figures; add generation here."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by constellation-kit fit")
    parser.add_argument("--items", type=int, default=64, help="copying questions (4 continuations each)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per model; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures: dict = {"load_average": os.getloadavg()[0], "threads": torch.get_num_threads()}
    for section in SECTIONS:
        result = section(args)
        print(f"{section.__name__}: {result}", file=sys.stderr)
        figures[section.__name__] = result
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
