"""``constellation-kit export``: a trained run's language model as a transformers checkpoint directory.

::

    constellation-kit export --ckpt_path runs/.../checkpoints/last.ckpt --output exported/ [--dtype bf16]

The directory loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
and no custom code (see :mod:`constellation_kit.interop.export` and ``docs/interop.md``).
"""

import json

from jsonargparse import ArgumentParser, Namespace

from constellation_kit.cli import Command, ConstellationCLI, register_command
from constellation_kit.interop.export import DEFAULT_SHARD_BYTES, DTYPES, export_checkpoint


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--ckpt_path", type=str, required=True,
                        help="a checkpoint fit wrote: a .ckpt file, or a sharded (FSDP2) checkpoint directory")
    parser.add_argument("--output", type=str, required=True, help="the directory to write the transformers checkpoint to")
    parser.add_argument("--dtype", type=str | None, default=None, choices=[*DTYPES, None],
                        help="convert the weights (fp32, bf16, fp16); default: as stored")
    parser.add_argument("--run_config", type=str | None, default=None,
                        help="the run's config.yaml (default: found beside or above the checkpoint)")
    parser.add_argument("--max_shard_bytes", type=int, default=DEFAULT_SHARD_BYTES,
                        help="split the safetensors into files of at most this many bytes")


def run(config: Namespace, cli: ConstellationCLI) -> None:
    summary = export_checkpoint(config.ckpt_path, config.output, dtype=DTYPES[config.dtype] if config.dtype else None,
                                config_path=config.run_config, max_shard_bytes=config.max_shard_bytes)
    if summary["encoders_left_out"]:
        print("note: the run's vision/audio encoders and projectors are not part of a causal-LM export")
    print(json.dumps(summary))


register_command(Command(
    name="export",
    help="Write a trained run's language model as a transformers checkpoint (config, safetensors, tokenizer).",
    add_arguments=add_arguments,
    run=run,
))
