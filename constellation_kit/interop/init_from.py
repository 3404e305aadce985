"""Start a kit text network from a transformers checkpoint directory (``init_from: DIR``).

The recipe describes the network; the checkpoint must hold the same architecture. Its
``config.json`` is compared with what the network would export to, and every difference is named
(``hidden_size: checkpoint 4096, network 512``) before any weight is read. Then each kit tensor is
filled from the checkpoint's tensors (:class:`~constellation_kit.interop.tensors.TensorMap`), and a
shape that differs names the tensor and both shapes.

Under FSDP2 (a network that :func:`~constellation_kit.train.parallelize.parallelize` sharded and
materialised) each parameter is a ``DTensor`` sharded on dimension 0: each rank reads only its own
rows from the memory-mapped safetensors, so no rank ever holds the whole model, and the full
checkpoint is read once across all ranks, not once per rank.
"""

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from constellation_kit.errors import ConfigError
from constellation_kit.interop.families import Family, family_of
from constellation_kit.interop.safetensors_io import SafetensorsReader
from constellation_kit.interop.spec import describe
from constellation_kit.model.transformer import Transformer

log = logging.getLogger(__name__)

# Wrappers that parallelize() may put around a block; their prefixes are not part of the weight's name.
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")

_IGNORED_CONFIG_KEYS = {"architectures", "model_type", "dtype", "bos_token_id", "eos_token_id", "pad_token_id",
                        "use_cache", "max_position_embeddings", "attention_dropout", "router_jitter_noise"}


def read_config(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict, with a clear error when the directory is not a checkpoint."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConfigError(f"init_from: {directory} has no config.json: point it at a transformers checkpoint "
                          "directory on local disk (what save_pretrained or `constellation-kit export` writes)")
    return json.loads(path.read_text())


def config_mismatches(network: Transformer, config: dict[str, Any], family: Family) -> list[str]:
    """``"key: checkpoint X, network Y"`` for every architecture setting where they differ."""
    spec = describe(network)
    limits = spec.unsupported + family.limits(spec)
    if limits:
        return [f"the network has {why}" for why in limits]
    expected = family.config(spec)
    found = _with_defaults(config, family)
    differ = []
    for key, value in expected.items():
        if key in _IGNORED_CONFIG_KEYS:
            continue
        if key == "sliding_window" and not spec.has_local:
            continue  # unused when no layer slides
        if key == "intermediate_size" and family.model_type == "mellum" and spec.dense_hidden is None:
            continue  # Mellum's dense width: unused when every block is MoE
        if key in ("moe_intermediate_size", "num_experts", "num_experts_per_tok", "norm_topk_prob") and not spec.is_moe:
            continue
        if found.get(key) != value:
            differ.append(f"{key}: checkpoint {found.get(key)!r}, network {value!r}")
    return differ


def _with_defaults(config: dict[str, Any], family: Family) -> dict[str, Any]:
    # Released configs leave out what their class defaults (head_dim, Mixtral's num_local_experts
    # is sometimes spelt num_experts); resolve them the way transformers does.
    found = dict(config)
    if not found.get("head_dim"):
        found["head_dim"] = found["hidden_size"] // found["num_attention_heads"]
    if found.get("num_key_value_heads") is None:
        found["num_key_value_heads"] = found["num_attention_heads"]
    if "rope_parameters" not in found and "rope_theta" in found:
        found["rope_parameters"] = {"rope_type": "default", "rope_theta": found["rope_theta"]}
    if family.model_type == "mellum" and "num_local_experts" in found:
        found.setdefault("num_experts", found["num_local_experts"])
    if family.model_type == "mixtral":
        found.setdefault("sliding_window", None)
    found.setdefault("tie_word_embeddings", False)
    return found


def check_fits(network: Transformer, directory: str | Path) -> Family:
    """The checkpoint's family, or a :class:`ConfigError` naming every setting where it and ``network`` differ.

    Reads only ``config.json``, so the CLI calls it on a meta-device network before any setup.
    """
    config = read_config(directory)
    family = family_of(config)
    mismatches = config_mismatches(network, config, family)
    if mismatches:
        raise ConfigError(f"init_from: the checkpoint {directory} ({config.get('model_type')}) does not fit the "
                          "recipe's network: " + "; ".join(mismatches)
                          + ". Make the recipe's network match the checkpoint's config.json "
                          "(python -m constellation_kit.interop.recipe DIR writes it).")
    return family


def _named_parameters(network: nn.Module) -> dict[str, nn.Parameter]:
    named = {}
    for name, param in network.named_parameters():
        for prefix in _WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        named[name] = param
    return named


@torch.no_grad()
def load_pretrained(network: Transformer, directory: str | Path) -> None:
    """Overwrite ``network``'s weights with a transformers checkpoint's (plain, or FSDP2-sharded and materialised).

    Raises :class:`ConfigError` naming every architecture difference, a missing tensor, or a tensor
    whose shape differs (with both shapes). Router ``expert_bias`` buffers are left as they are
    (zero on a fresh network: the released routers have none).
    """
    directory = Path(directory)
    family = check_fits(network, directory)
    spec = describe(network)
    reader = SafetensorsReader(directory)
    params = _named_parameters(network)
    maps = family.tensor_maps(spec)
    used: set[str] = set()
    for tensor_map in maps:
        param = params.get(tensor_map.kit)
        if param is None:
            raise ConfigError(f"init_from: the network has no parameter {tensor_map.kit!r} for the checkpoint's "
                              f"{tensor_map.hf_names()[0]}")
        found = tensor_map.kit_shape(reader)
        expected = tuple(param.shape)
        padded = tensor_map.rows is not None and found[0] == tensor_map.rows and found[1:] == expected[1:]
        if found != expected and not padded:
            raise ConfigError(f"init_from: tensor {tensor_map.hf_names()[0]} has shape {list(found)} in {directory}, "
                              f"but the network's {tensor_map.kit} needs {list(expected)}")
        _fill(param, tensor_map, reader)
        used.update(tensor_map.hf_names())
    extra = sorted(set(reader.names()) - used)
    if extra:
        raise ConfigError(f"init_from: {directory} holds tensors the network has no place for: {extra[:5]}"
                          f"{' ...' if len(extra) > 5 else ''}")
    log.info("Initialised the network from %s (%s, %d tensors)", directory, family.architecture, len(used))


def _fill(param: nn.Parameter, tensor_map, reader: SafetensorsReader) -> None:
    full_rows = param.shape[0]
    if isinstance(param, DTensor):
        local = param.to_local()
        if local.numel() == 0:
            return
        shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
        if any(offset[1:]) or tuple(shape[1:]) != tuple(param.shape[1:]):
            raise ConfigError(f"init_from reads dimension-0 shards only; {tensor_map.kit} is sharded as {param.placements}")
        rows = tensor_map.read_rows(reader, offset[0], offset[0] + shape[0], full_rows)
        local.copy_(rows.to(local.dtype))
    else:
        param.copy_(tensor_map.read_rows(reader, 0, full_rows, full_rows).to(param.dtype))
