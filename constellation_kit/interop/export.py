"""Export a kit text network as a transformers checkpoint directory.

The directory is what ``AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` load with no custom code: ``config.json``, the weights as
(sharded) safetensors in the names ``save_pretrained`` uses, ``generation_config.json``, and the
run's tokenizer (``tokenizer.json`` + ``tokenizer_config.json``).

Tensors are converted and written one at a time from a :data:`TensorSource`, so exporting from a
sharded checkpoint (:mod:`constellation_kit.interop.checkpoint_source`) never holds the whole
model: peak memory is one shard of output plus the largest single tensor.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from constellation_kit.data.tokenizer import END_OF_TEXT
from constellation_kit.errors import ConfigError
from constellation_kit.interop.families import Family, choose_family
from constellation_kit.interop.safetensors_io import write_sharded
from constellation_kit.interop.spec import NetworkSpec, describe
from constellation_kit.interop.tensors import TensorSource
from constellation_kit.model.transformer import Transformer

DEFAULT_SHARD_BYTES = 5 * 2**30
"""Transformers' default ``max_shard_size`` (5 GB)."""

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def hf_config(spec: NetworkSpec, family: Family, dtype: torch.dtype, max_position_embeddings: int,
              eos_token_id: int | None) -> dict[str, Any]:
    """The ``config.json`` contents for ``spec`` in ``family``."""
    return {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        **family.config(spec),
        "max_position_embeddings": max_position_embeddings,
        "dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": None,
        "use_cache": True,
    }


def converted_tensors(network: Transformer, source: TensorSource, dtype: torch.dtype | None = None
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """``(transformers name, tensor)`` for every weight of ``network``'s family, read from ``source`` one by one.

    ``network`` gives the architecture only (it may be on the meta device); ``source`` the values.
    """
    spec = describe(network)
    family = choose_family(spec)
    maps = family.tensor_maps(spec)
    _check_coverage(network, {m.kit for m in maps})
    for index, layer in enumerate(spec.layers):
        if layer.moe and bool(source(f"blocks.{index}.feed_forward.router.expert_bias").any()):
            raise ConfigError(f"block {index}'s router has a non-zero expert_bias (the aux-loss-free balancer's): "
                              f"{family.architecture}'s router has no selection bias, so the export would route differently")
    for tensor_map in maps:
        kit = source(tensor_map.kit)
        if dtype is not None:
            kit = kit.to(dtype)
        yield from tensor_map.to_hf(kit).items()


def _check_coverage(network: Transformer, mapped: set[str]) -> None:
    # Every weight must land somewhere: a parameter the maps miss would be silently dropped.
    left = [name for name in network.state_dict() if name not in mapped and not name.endswith("expert_bias")]
    if left:
        raise ConfigError(f"the export mapping does not cover {left[:5]}: this network has parts no family maps")


def export_network(
    network: Transformer,
    directory: str | Path,
    *,
    source: TensorSource | None = None,
    tokenizer: Tokenizer | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    max_position_embeddings: int = 4096,
) -> Path:
    """Write ``network`` (weights from ``source``, default its own state) as a transformers checkpoint.

    ``dtype`` converts the weights (``None``: as stored). Raises :class:`ConfigError` naming the
    features no transformers class can express. Returns the directory.
    """
    directory = Path(directory)
    spec = describe(network)
    family = choose_family(spec)
    if source is None:
        state = network.state_dict()
        source = state.__getitem__
    first = source("token_embedding.weight")
    out_dtype = dtype or first.dtype
    eos = tokenizer.token_to_id(END_OF_TEXT) if tokenizer is not None else None
    write_sharded(converted_tensors(network, source, dtype), directory, max_shard_bytes)
    config = hf_config(spec, family, out_dtype, max_position_embeddings, eos)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"eos_token_id": eos, "pad_token_id": eos, "bos_token_id": None}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        write_tokenizer(tokenizer, directory, max_position_embeddings)
    return directory


def write_tokenizer(tokenizer: Tokenizer, directory: Path, model_max_length: int) -> None:
    """``tokenizer.json`` and the ``tokenizer_config.json`` that makes ``AutoTokenizer`` load it as a fast tokenizer."""
    (directory / "tokenizer.json").write_text(tokenizer.to_str())
    has_eos = tokenizer.token_to_id(END_OF_TEXT) is not None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "eos_token": END_OF_TEXT if has_eos else None,
        "pad_token": END_OF_TEXT if has_eos else None,
        "bos_token": None,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def export_checkpoint(
    ckpt_path: str | Path,
    output: str | Path,
    *,
    dtype: torch.dtype | None = None,
    config_path: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> dict[str, Any]:
    """Export a ``fit`` checkpoint (single file or sharded) to ``output``; return a summary of what was written.

    Only the text network is exported: a multimodal run's encoders and projectors have no place in a
    ``*ForCausalLM`` class (the summary says so).
    """
    from constellation_kit.interop.checkpoint_source import open_checkpoint  # lightning/yaml only needed here

    opened = open_checkpoint(ckpt_path, config_path)
    seq_len = ((opened.config.get("data") or {}).get("init_args") or {}).get("seq_len") or 4096
    directory = export_network(opened.network, output, source=opened.source, tokenizer=opened.tokenizer,
                               dtype=dtype, max_shard_bytes=max_shard_bytes, max_position_embeddings=int(seq_len))
    config = json.loads((directory / "config.json").read_text())
    files = sorted(p.name for p in directory.iterdir())
    return {"output": str(directory), "architecture": config["architectures"][0], "dtype": config["dtype"],
            "files": files, "encoders_left_out": opened.has_encoders}
