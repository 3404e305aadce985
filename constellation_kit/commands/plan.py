"""``constellation-kit plan``: what a recipe costs before it runs.

Parameters (total and active per token), FLOPs per token, tokens per optimizer step, the micro-batch
per GPU, memory per GPU under FSDP2, whether it fits, the fewest GPUs that fit, and the step time
at a stated MFU. The network is built on the meta device, so this takes seconds on a laptop for
any model size.
"""

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from lightning import LightningModule
from torch import nn
from jsonargparse import ArgumentParser, Namespace

from constellation_kit.cli import Command, ConstellationCLI, register_command
from constellation_kit.data.batching import micro_batch_size
from constellation_kit.errors import ConfigError
from constellation_kit.model.flops import active_parameters, training_flops_per_token
from constellation_kit.model.transformer import Transformer

GIB = 2**30


@dataclass(frozen=True)
class GPU:
    """What ``plan`` needs to know about an accelerator."""

    memory_gib: float
    bf16_tflops: float  # dense peak, no sparsity


GPUS = {
    "h100-80gb": GPU(memory_gib=80, bf16_tflops=989.0),
    "h200-141gb": GPU(memory_gib=141, bf16_tflops=989.0),
    "a100-80gb": GPU(memory_gib=80, bf16_tflops=312.0),
    "a100-40gb": GPU(memory_gib=40, bf16_tflops=312.0),
}


@dataclass
class Plan:
    """The numbers ``plan`` reports; ``--json`` prints them as one object."""

    total_params: int
    active_params: int
    encoder_params: int
    flops_per_token: float
    seq_len: int
    tokens_per_step: int
    global_batch_size: int
    accumulate_grad_batches: int
    num_gpus: int
    micro_batch_per_gpu: int
    memory_per_gpu_gib: float
    memory_breakdown_gib: dict[str, float]
    gpu: str
    fits: bool
    min_gpus: int | None
    mfu: float
    step_time_s: float


def memory_per_gpu(network: Transformer, total: int, micro_batch: int, seq_len: int, num_gpus: int,
                   activation_checkpointing: bool, chunked_loss: bool, largest_media_module: int = 0) -> dict[str, float]:
    """Bytes per GPU under FSDP2 with bf16 compute and fp32 master weights, in GiB by component.

    - sharded state: fp32 parameters (4 B), fp32 gradients (4 B), AdamW moments (8 B), all ÷ GPUs;
    - gathered blocks: bf16 copies of two blocks (the current and the prefetched one) and one
      block's bf16 gradients; an encoder is one FSDP unit, so the largest is gathered whole the
      same way (``largest_media_module`` parameters);
    - activations: per layer ``34 · s · b · h`` bytes with FlashAttention (Korthikanti et al. 2022,
      the ``5as/h`` score term gone); with activation checkpointing only each block's bf16 input is
      kept (``2 · s · b · h``), plus one block's full activations while it is recomputed;
    - logits: fp32 logits and their gradient for the micro-batch, or one 4096-token chunk when the
      loss is chunked.

    Encoder activations are not counted: a media item is a few hundred tokens through a model a tenth
    the language model's size, small beside the language model's 8k-token sequences.
    """
    d, layers = network.d_model, network.n_layers
    block_params = max(sum(p.numel() for p in block.parameters()) for block in network.blocks)
    vocab = network.token_embedding.weight.shape[0]
    tokens = micro_batch * seq_len
    per_layer_activations = 34 * tokens * d
    memory = {
        "parameters": 4 * total / num_gpus,
        "gradients": 4 * total / num_gpus,
        "optimizer": 8 * total / num_gpus,
        "gathered_blocks": 3 * 2 * max(block_params, largest_media_module),
        "activations": (layers * 2 * tokens * d + per_layer_activations) if activation_checkpointing
        else layers * per_layer_activations,
        "logits": 2 * 4 * (min(tokens, 4096) if chunked_loss else tokens) * vocab,
    }
    return {k: v / GIB for k, v in memory.items()}


def build_model(model_config: Namespace, vocab_size: int) -> tuple[Transformer, list[nn.Module]]:
    """The recipe's network and its media modules (encoders, projectors; none for a text model), on meta.

    The LightningModule itself is instantiated (it only holds factories) and asked to build its parts,
    so ``plan`` counts exactly what ``fit`` would build.
    """
    parser = ArgumentParser()
    parser.add_argument("--model", type=LightningModule)
    model_config = model_config.clone()
    model_config.init_args.vocab_size = vocab_size
    module = parser.instantiate_classes(parser.parse_object({"model": model_config})).model
    with torch.device("meta"):
        network = module.network_factory(vocab_size)
        build_media = getattr(module, "build_media", None)
        media = [m for group in build_media(network.d_model) for m in group.values()] if build_media else []
    return network, media


def make_plan(config: Namespace) -> Plan:
    data = config.data.init_args
    vocab_size = config.vocab_size or _recipe_vocab_size(config)
    network, media = build_model(config.model, vocab_size)
    media_sizes = [sum(p.numel() for p in m.parameters()) for m in media]
    network_total = sum(p.numel() for p in network.parameters())
    total = network_total + sum(media_sizes)
    # An item's encoder runs once per item, not per text token: active per token is the network's.
    active = active_parameters(network)
    seq_len, global_batch = data.seq_len, data.global_batch_size
    accumulation = config.trainer.accumulate_grad_batches
    num_nodes = config.num_nodes or _recipe_count(config.trainer.get("num_nodes"))
    num_gpus = num_nodes * (config.devices or _recipe_count(config.trainer.get("devices")))
    micro = micro_batch_size(global_batch, accumulation, num_gpus)
    strategy = config.trainer.strategy
    strategy_args = strategy.init_args if isinstance(strategy, Namespace) else Namespace()
    checkpointing = bool(strategy_args.get("activation_checkpointing", False))
    chunked = bool(getattr(config.model.init_args, "loss_chunk_size", None))
    gpu = GPUS[config.gpu]
    fpt = training_flops_per_token(network, seq_len)
    tokens_per_step = global_batch * seq_len

    def memory_at(n: int, micro_batch: int) -> dict[str, float]:
        return memory_per_gpu(network, total, micro_batch, seq_len, n, checkpointing, chunked, max(media_sizes, default=0))

    breakdown = memory_at(num_gpus, micro)
    usable = gpu.memory_gib * 0.9  # the CUDA context, allocator fragmentation and NCCL buffers take the rest
    fits = sum(breakdown.values()) <= usable
    # Powers of two over which the global batch divides (the micro-batch shrinks as GPUs are added).
    candidates = [n for n in (2**i for i in range(0, 17)) if global_batch % (accumulation * n) == 0]
    min_gpus = next((n for n in candidates
                     if sum(memory_at(n, micro_batch_size(global_batch, accumulation, n)).values()) <= usable), None)
    step_time = tokens_per_step * fpt / (num_gpus * gpu.bf16_tflops * 1e12 * config.mfu)
    return Plan(
        total_params=total, active_params=active, encoder_params=total - network_total, flops_per_token=fpt,
        seq_len=seq_len, tokens_per_step=tokens_per_step, global_batch_size=global_batch,
        accumulate_grad_batches=accumulation, num_gpus=num_gpus, micro_batch_per_gpu=micro,
        memory_per_gpu_gib=round(sum(breakdown.values()), 2),
        memory_breakdown_gib={k: round(v, 2) for k, v in breakdown.items()}, gpu=config.gpu, fits=fits,
        min_gpus=min_gpus, mfu=config.mfu, step_time_s=step_time,
    )


def _recipe_count(value: Any) -> int:
    """The recipe's ``trainer.num_nodes`` / ``trainer.devices`` as a number of GPUs (``auto``, a list: 1)."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, (list, tuple)):
        return len(value)
    return 1


def _recipe_vocab_size(config: Namespace) -> int:
    """The vocabulary the data will have: its tokenizer's size, or a synthetic task's."""
    data = config.data.init_args
    for part in ("tokenizer", "task"):
        spec = data.get(part)
        size = spec.init_args.get("vocab_size") if isinstance(spec, Namespace) else None
        if size:
            return int(size)
    raise ConfigError("plan needs the vocabulary size: the recipe's data gives none, so pass --vocab_size")


def format_plan(plan: Plan) -> str:
    def count(n: float) -> str:
        return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"

    lines = [
        f"parameters          {count(plan.total_params)} total ({count(plan.encoder_params)} in media encoders), "
        f"{count(plan.active_params)} active per token",
        f"FLOPs per token     {plan.flops_per_token / 1e9:.2f} GFLOP (training, fwd+bwd)",
        f"tokens per step     {plan.tokens_per_step:,} ({plan.global_batch_size:,} sequences x {plan.seq_len:,})",
        f"micro-batch / GPU   {plan.micro_batch_per_gpu} (x {plan.accumulate_grad_batches} accumulation x {plan.num_gpus} GPUs)",
        f"memory / GPU        {plan.memory_per_gpu_gib:.1f} GiB on {plan.gpu}: "
        + ", ".join(f"{k} {v:.1f}" for k, v in plan.memory_breakdown_gib.items()),
        f"fits                {'yes' if plan.fits else 'NO'}; fewest GPUs that fit: {plan.min_gpus or 'none up to 65536'}",
        f"step time           {plan.step_time_s:.2f} s at {plan.mfu:.0%} MFU",
    ]
    return "\n".join(lines)


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--num_nodes", type=int | None, default=None, help="nodes to plan for (default: the recipe's trainer.num_nodes)")
    parser.add_argument("--devices", type=int | None, default=None, help="GPUs per node (default: the recipe's trainer.devices)")
    parser.add_argument("--gpu", type=str, default="h100-80gb", choices=sorted(GPUS), help="the accelerator")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for the step time")
    parser.add_argument("--vocab_size", type=int, default=None, help="override the tokenizer's vocabulary size")
    parser.add_argument("--json", type=bool, default=False, help="print one JSON object instead of a table")


def run(config: Namespace, cli: ConstellationCLI) -> None:
    plan = make_plan(config)
    print(json.dumps(asdict(plan)) if config.json else format_plan(plan))


register_command(Command(
    name="plan",
    help="Parameters, FLOPs, memory per GPU and step time of a recipe, before running it.",
    add_arguments=add_arguments,
    run=run,
    reads_recipe=True,
))
