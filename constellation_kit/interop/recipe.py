"""The recipe fragment that makes the kit's network the architecture of a transformers checkpoint.

``init_from: DIR`` needs a network of exactly the checkpoint's shape; this writes that network
section (and ``init_from``, and the checkpoint's ``tokenizer.json`` when it has one) from its
``config.json``, to stack on a base recipe::

    python -m constellation_kit.interop.recipe /path/to/Mixtral-8x7B-v0.1 > mixtral.yaml
    constellation-kit fit --config recipes/small.yaml --config mixtral.yaml

The inverse of :func:`constellation_kit.interop.families.Family.config`, for the three families.
"""

import sys
from pathlib import Path
from typing import Any

import yaml

from constellation_kit.errors import ConfigError
from constellation_kit.interop.families import family_of
from constellation_kit.interop.init_from import _with_defaults, read_config


def _theta(parameters: dict[str, Any]) -> float:
    if parameters.get("rope_type", "default") != "default":
        raise ConfigError(f"rope_type {parameters['rope_type']!r}: only plain RoPE maps (scaling is set per run)")
    return float(parameters["rope_theta"])


def network_section(directory: str | Path) -> dict[str, Any]:
    """``{"model": {"init_args": {"init_from": ..., "network": ...}}, ...}`` for the checkpoint in ``directory``."""
    config = read_config(directory)
    family = family_of(config)
    c = _with_defaults(config, family)
    attention: dict[str, Any] = {"n_heads": c["num_attention_heads"], "n_kv_heads": c["num_key_value_heads"],
                                 "head_dim": c["head_dim"]}
    network: dict[str, Any] = {"d_model": c["hidden_size"], "n_layers": c["num_hidden_layers"],
                               "tie_embeddings": bool(c["tie_word_embeddings"]),
                               "norm": {"class_path": "torch.nn.RMSNorm", "init_args": {"eps": c["rms_norm_eps"]}}}
    moe: dict[str, Any] | None = None
    if family.model_type in ("llama", "mixtral"):
        # Set, not left to the base recipe: stacked on xl.yaml these would otherwise stay LLLLLG and on.
        attention.update(layer_pattern="G", qk_norm=False, local_rope_base=None)
    if family.model_type == "llama":
        attention["rope_base"] = _theta(c["rope_parameters"])
        network["moe"] = None
        network["feed_forward"] = {"class_path": "constellation_kit.model.SwiGLU",
                                   "init_args": {"hidden_dim": c["intermediate_size"]}}
    elif family.model_type == "mixtral":
        attention["rope_base"] = _theta(c["rope_parameters"])
        if c.get("sliding_window"):
            attention.update(layer_pattern="L", window=c["sliding_window"])
        moe = {"num_experts": c.get("num_local_experts", 8), "expert_hidden_dim": c["intermediate_size"],
               "top_k": c.get("num_experts_per_tok", 2), "renormalize": True}
        network["moe_every"] = 1
    else:  # mellum
        kinds, mlps = c["layer_types"], c["mlp_layer_types"]
        attention.update(qk_norm=True, rope_base=_theta(c["rope_parameters"]["full_attention"]),
                         local_rope_base=_theta(c["rope_parameters"]["sliding_attention"]),
                         layer_pattern="".join("L" if kind == "sliding_attention" else "G" for kind in kinds),
                         window=c["sliding_window"])
        sparse = [i for i, kind in enumerate(mlps) if kind == "sparse"]
        every = sparse[0] + 1 if sparse else 0
        if sparse and sparse != list(range(every - 1, len(mlps), every)):
            raise ConfigError(f"mlp_layer_types {mlps}: the kit places MoE blocks every moe_every-th block only")
        network["feed_forward"] = {"class_path": "constellation_kit.model.SwiGLU",
                                   "init_args": {"hidden_dim": c["intermediate_size"]}}
        if sparse:
            moe = {"num_experts": c["num_experts"], "expert_hidden_dim": c["moe_intermediate_size"],
                   "top_k": c["num_experts_per_tok"], "renormalize": bool(c.get("norm_topk_prob", True))}
            network["moe_every"] = every
        else:
            network["moe"] = None
    network["attention"] = {"class_path": "constellation_kit.model.GroupedQueryAttention", "init_args": attention}
    if moe is not None:
        router = {"class_path": "constellation_kit.model.TopKRouter",
                  "init_args": {"top_k": moe["top_k"], "score": "softmax", "renormalize": moe["renormalize"],
                                "route_scale": 1.0}}
        network["moe"] = {"class_path": "constellation_kit.model.MoEFeedForward",
                          "init_args": {"num_experts": moe["num_experts"], "expert_hidden_dim": moe["expert_hidden_dim"],
                                        "num_shared_experts": 0, "router": router}}
    recipe: dict[str, Any] = {"model": {"init_args": {"init_from": str(Path(directory).resolve()),
                                                      "network": {"class_path": "constellation_kit.model.Transformer",
                                                                  "init_args": network}}}}
    tokenizer = Path(directory) / "tokenizer.json"
    if tokenizer.is_file():
        recipe["data"] = {"init_args": {"tokenizer": {"class_path": "constellation_kit.data.ByteLevelBPE",
                                                      "init_args": {"path": str(tokenizer.resolve())}}}}
    return recipe


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m constellation_kit.interop.recipe CHECKPOINT_DIR > network.yaml")
    header = f"# The network of {args[0]} (from its config.json), started from its weights.\n"
    print(header + yaml.safe_dump(network_section(args[0]), sort_keys=False), end="")


if __name__ == "__main__":
    main()
