"""The transformers classes a kit text network maps to, and the tensor names of each.

Three families cover the kit's recipes, each computing exactly what the kit computes (pre-norm
RMSNorm blocks, rotate-half RoPE, grouped-query attention scaled by ``head_dim ** -0.5``, SwiGLU):

- **Mixtral** (``MixtralForCausalLM``): the default top-k softmax MoE, every block MoE, the top-k
  weights renormalised to sum to one (Mixtral's router does so unconditionally), one attention kind
  for all layers (full, or a sliding window on every layer).
- **Mellum** (``MellumForCausalLM``, JetBrains Mellum2): per-layer sliding/full attention
  (``layer_types``) with a RoPE base per kind, per-layer dense/sparse feed-forwards
  (``mlp_layer_types``, the kit's ``moe_every``), QK-norm on each head before RoPE, and a softmax
  router with optional renormalisation (``norm_topk_prob``). The only class in transformers 5.24
  holding all of these with plain pre-norm RMSNorm; its QK-norm is always on, so a network
  without ``qk_norm`` goes to Mixtral or Llama instead.
  (Qwen3-MoE has QK-norm but one window setting for every layer; Dots1 adds the per-layer
  pattern but scores with a sigmoid and always has a shared expert.)
- **Llama** (``LlamaForCausalLM``): the dense variant (``variants/dense.yaml``), all global.

The kit's sliding window ``W`` (tokens seen, the query's own included) is transformers'
``sliding_window`` (its mask keeps ``kv > q - sliding_window``).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from constellation_kit.errors import ConfigError
from constellation_kit.interop.spec import NetworkSpec
from constellation_kit.interop.tensors import TensorMap


@dataclass(frozen=True)
class Family:
    """A transformers architecture: whether it holds a network, its config and its tensor names."""

    name: str
    architecture: str
    model_type: str
    limits: Callable[[NetworkSpec], list[str]]
    """The network's features this class cannot express (empty: it maps exactly)."""
    config: Callable[[NetworkSpec], dict[str, Any]]
    expert_names: tuple[str, str, str, str] | None
    """MoE block prefix, then the per-expert gate, up and down templates (``{e}``: expert index)."""

    def tensor_maps(self, spec: NetworkSpec) -> list[TensorMap]:
        """Every kit tensor (named relative to the Transformer) and where this family keeps it."""
        maps = [TensorMap("token_embedding.weight", ("model.embed_tokens.weight",), rows=spec.vocab_size),
                TensorMap("final_norm.weight", ("model.norm.weight",))]
        if not spec.tie_embeddings:
            maps.append(TensorMap("lm_head.weight", ("lm_head.weight",), rows=spec.vocab_size))
        for i, layer in enumerate(spec.layers):
            kit, hf = f"blocks.{i}.", f"model.layers.{i}."
            maps += [
                TensorMap(kit + "attention_norm.weight", (hf + "input_layernorm.weight",)),
                TensorMap(kit + "feed_forward_norm.weight", (hf + "post_attention_layernorm.weight",)),
                TensorMap(kit + "attention.q_proj.weight", (hf + "self_attn.q_proj.weight",)),
                TensorMap(kit + "attention.kv_proj.weight", (hf + "self_attn.k_proj.weight", hf + "self_attn.v_proj.weight"),
                          "rows"),
                TensorMap(kit + "attention.out_proj.weight", (hf + "self_attn.o_proj.weight",)),
            ]
            if spec.qk_norm:
                maps += [TensorMap(kit + "attention.q_norm.weight", (hf + "self_attn.q_norm.weight",)),
                         TensorMap(kit + "attention.k_norm.weight", (hf + "self_attn.k_norm.weight",))]
            if layer.moe:
                block, gate, up, down = self.expert_names
                moe = f"{hf}{block}."
                maps += [
                    TensorMap(kit + "feed_forward.router.weight", (moe + "gate.weight",)),
                    TensorMap(kit + "feed_forward.experts.gate_up_proj", (moe + gate, moe + up), "experts_gate_up",
                              num_experts=spec.num_experts),
                    TensorMap(kit + "feed_forward.experts.down_proj", (moe + down,), "experts_down",
                              num_experts=spec.num_experts),
                ]
            else:
                maps += [
                    TensorMap(kit + "feed_forward.gate_up_proj.weight", (hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"),
                              "rows"),
                    TensorMap(kit + "feed_forward.down_proj.weight", (hf + "mlp.down_proj.weight",)),
                ]
        return maps


def _common(spec: NetworkSpec) -> dict[str, Any]:
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "rms_norm_eps": spec.norm_eps,
        "tie_word_embeddings": spec.tie_embeddings,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
    }


def _rope(base: float) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": base}


def _bases(spec: NetworkSpec, local: bool) -> set[float]:
    return {layer.rope_base for layer in spec.layers if layer.local == local}


# --- Mixtral --------------------------------------------------------------------------------------

def _mixtral_limits(spec: NetworkSpec) -> list[str]:
    why = []
    if not all(layer.moe for layer in spec.layers):
        why.append("dense blocks between MoE blocks (moe_every > 1): Mixtral makes every block MoE")
    if spec.has_local and not all(layer.local for layer in spec.layers):
        why.append("a layer_pattern mixing local and global layers: Mixtral has one sliding_window for all layers")
    if spec.is_moe and not spec.renormalize:
        why.append("router renormalize=false: Mixtral always renormalises the top-k weights")
    if spec.qk_norm:
        why.append("qk_norm: Mixtral has no QK-norm")
    if len({layer.rope_base for layer in spec.layers}) > 1:
        why.append("a local_rope_base differing from rope_base: Mixtral has one RoPE base")
    return why


def _mixtral_config(spec: NetworkSpec) -> dict[str, Any]:
    return {**_common(spec), "intermediate_size": spec.expert_hidden, "num_local_experts": spec.num_experts,
            "num_experts_per_tok": spec.top_k, "router_jitter_noise": 0.0,
            "sliding_window": spec.window if spec.has_local else None,
            "rope_parameters": _rope(spec.layers[0].rope_base)}


MIXTRAL = Family("mixtral", "MixtralForCausalLM", "mixtral", _mixtral_limits, _mixtral_config,
                 ("block_sparse_moe", "experts.{e}.w1.weight", "experts.{e}.w3.weight", "experts.{e}.w2.weight"))


# --- Mellum ---------------------------------------------------------------------------------------

def _mellum_limits(spec: NetworkSpec) -> list[str]:
    why = []
    if not spec.qk_norm:
        why.append("qk_norm off: Mellum always applies QK-norm")
    if len(_bases(spec, True)) > 1 or len(_bases(spec, False)) > 1:
        why.append("RoPE bases varying within one attention kind")
    return why


def _mellum_config(spec: NetworkSpec) -> dict[str, Any]:
    local, full = _bases(spec, True), _bases(spec, False)
    return {
        **_common(spec),
        "intermediate_size": spec.dense_hidden or max(spec.expert_hidden * spec.top_k, 1),
        "moe_intermediate_size": spec.expert_hidden or 1,
        "num_experts": spec.num_experts or 1,
        "num_experts_per_tok": spec.top_k or 1,
        "norm_topk_prob": spec.renormalize,
        "sliding_window": spec.window or 4096,
        "layer_types": ["sliding_attention" if layer.local else "full_attention" for layer in spec.layers],
        "mlp_layer_types": ["sparse" if layer.moe else "dense" for layer in spec.layers],
        "rope_parameters": {"full_attention": _rope(next(iter(full or local))),
                            "sliding_attention": _rope(next(iter(local or full)))},
    }


MELLUM = Family("mellum", "MellumForCausalLM", "mellum", _mellum_limits, _mellum_config,
                ("mlp", "experts.{e}.gate_proj.weight", "experts.{e}.up_proj.weight", "experts.{e}.down_proj.weight"))


# --- Llama ----------------------------------------------------------------------------------------

def _llama_limits(spec: NetworkSpec) -> list[str]:
    why = []
    if spec.is_moe:
        why.append("MoE blocks: Llama is dense")
    if spec.has_local:
        why.append("local (sliding-window) layers: Llama attends globally")
    if spec.qk_norm:
        why.append("qk_norm: Llama has no QK-norm")
    return why


def _llama_config(spec: NetworkSpec) -> dict[str, Any]:
    return {**_common(spec), "intermediate_size": spec.dense_hidden, "attention_bias": False, "mlp_bias": False,
            "rope_parameters": _rope(spec.layers[0].rope_base)}


LLAMA = Family("llama", "LlamaForCausalLM", "llama", _llama_limits, _llama_config, None)

FAMILIES: dict[str, Family] = {family.model_type: family for family in (MIXTRAL, MELLUM, LLAMA)}
"""By transformers ``model_type``."""


def choose_family(spec: NetworkSpec) -> Family:
    """The family that expresses ``spec`` exactly, or a :class:`ConfigError` naming what none can hold."""
    if spec.unsupported:
        raise ConfigError("no transformers class computes this network: " + "; ".join(spec.unsupported)
                          + ". Change those settings in the recipe to export it.")
    reasons = {}
    for family in (LLAMA, MIXTRAL, MELLUM):
        why = family.limits(spec)
        if not why:
            return family
        reasons[family.architecture] = why
    detail = " | ".join(f"{name}: {', '.join(why)}" for name, why in reasons.items())
    raise ConfigError(f"no transformers class holds this network's combination of features ({detail}). "
                      "Turn on qk_norm to export a layer pattern or moe_every to Mellum, or change the recipe.")


def family_of(config: dict[str, Any]) -> Family:
    """The family of a transformers ``config.json`` dict, or a :class:`ConfigError` listing those supported."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(f"model_type {model_type!r} has no mapping to the kit's Transformer; supported: "
                          f"{', '.join(sorted(FAMILIES))} (Mixtral-, Mellum- and Llama-class checkpoints)")
    return FAMILIES[model_type]
