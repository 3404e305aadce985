"""What a kit network computes, read off a built :class:`~constellation_kit.model.Transformer`.

The export and import mappings need the network's architecture, not its weights: widths, heads,
which layers are local or MoE, the router's options, the norm's epsilon. :func:`describe` reads them
from the modules themselves, so it works on a meta-device network of any size (an 8x7B model costs
nothing to build there) and never drifts from what the forward pass actually does.

Everything a transformers class might not be able to express is recorded, and each family
(:mod:`constellation_kit.interop.families`) says which of those features it has no counterpart for.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from constellation_kit.errors import ConfigError
from constellation_kit.model.attention import GroupedQueryAttention
from constellation_kit.model.feedforward import SwiGLU
from constellation_kit.model.moe import MoEFeedForward
from constellation_kit.model.router import TopKRouter
from constellation_kit.model.transformer import Transformer


@dataclass
class LayerSpec:
    """One block: its attention kind, RoPE base and whether its feed-forward is MoE."""

    local: bool
    """Sliding-window (local) attention; else full causal (global)."""
    rope_base: float
    moe: bool


@dataclass
class NetworkSpec:
    """The architecture of a kit text network, as the interop mappings need it."""

    vocab_size: int
    padded_vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    norm_eps: float
    tie_embeddings: bool
    layers: list[LayerSpec]
    window: int | None = None
    """Tokens a local layer sees, its own included (``None`` when no layer is local)."""
    qk_norm: bool = False
    dense_hidden: int | None = None
    """Inner width of the dense SwiGLU blocks (``None`` when every block is MoE)."""
    num_experts: int = 0
    top_k: int = 0
    expert_hidden: int = 0
    renormalize: bool = True
    unsupported: list[str] = field(default_factory=list)
    """Features no transformers class here can hold, each named with its value, for the error message."""

    @property
    def is_moe(self) -> bool:
        return any(layer.moe for layer in self.layers)

    @property
    def has_local(self) -> bool:
        return any(layer.local for layer in self.layers)


def _norm_eps(norm: nn.Module, where: str, unsupported: list[str]) -> float:
    if type(norm) is not nn.RMSNorm or not norm.elementwise_affine:
        unsupported.append(f"{where} is {type(norm).__name__}, not torch.nn.RMSNorm with a learned scale")
        return 1e-6
    # eps=None makes torch use the dtype's machine epsilon; transformers needs a number.
    return float(norm.eps) if norm.eps is not None else float(torch.finfo(torch.float32).eps)


def describe(network: Transformer) -> NetworkSpec:
    """Read the architecture of ``network`` (any device, meta included) into a :class:`NetworkSpec`."""
    if not isinstance(network, Transformer):
        raise ConfigError(f"interop maps constellation_kit.model.Transformer networks, got {type(network).__name__}")
    unsupported: list[str] = []
    norm_eps = _norm_eps(network.final_norm, "the norm", unsupported)
    first = network.blocks[0].attention
    if not isinstance(first, GroupedQueryAttention):
        raise ConfigError(f"interop maps GroupedQueryAttention, got {type(first).__name__}")
    spec = NetworkSpec(
        vocab_size=network.vocab_size,
        padded_vocab=network.token_embedding.weight.shape[0],
        d_model=network.d_model,
        n_layers=network.n_layers,
        n_heads=first.n_heads,
        n_kv_heads=first.n_kv_heads,
        head_dim=first.head_dim,
        norm_eps=norm_eps,
        tie_embeddings=network.tie_embeddings,
        layers=[],
        qk_norm=first.q_norm is not None,
        unsupported=unsupported,
    )
    for block in network.blocks:
        attention, ff = block.attention, block.feed_forward
        _check_attention(attention, spec, unsupported)
        if attention.window is not None:
            spec.window = attention.window
        moe = isinstance(ff, MoEFeedForward)
        spec.layers.append(LayerSpec(local=attention.kind == "local", rope_base=float(attention.rope.base), moe=moe))
        if moe:
            _check_moe(ff, spec, unsupported)
        elif isinstance(ff, SwiGLU):
            if ff.gate_up_proj.bias is not None:
                unsupported.append("feed_forward bias=true")
            spec.dense_hidden = ff.hidden_dim
        else:
            unsupported.append(f"feed_forward {type(ff).__name__} (only SwiGLU and MoEFeedForward map)")
    spec.unsupported = list(dict.fromkeys(unsupported))  # once each, not once per layer
    return spec


def _check_attention(attention: nn.Module, spec: NetworkSpec, unsupported: list[str]) -> None:
    if (attention.n_heads, attention.n_kv_heads, attention.head_dim) != (spec.n_heads, spec.n_kv_heads, spec.head_dim):
        unsupported.append("attention heads that differ between layers")
    if attention.q_proj.bias is not None:
        unsupported.append("attention bias=true")
    if attention.rope.scaling.kind != "none":
        unsupported.append(f"rope_scaling kind={attention.rope.scaling.kind!r}")
    if (attention.q_norm is not None) != spec.qk_norm:
        unsupported.append("qk_norm on some layers only")
    elif attention.q_norm is not None and attention.q_norm.eps != spec.norm_eps:
        # transformers' QK-norm classes reuse rms_norm_eps for the query/key norms.
        unsupported.append(f"qk_norm_eps={attention.q_norm.eps} differing from the norm's eps={spec.norm_eps} "
                           "(set the attention's qk_norm_eps to the norm's eps)")
    if attention.window is not None and spec.window not in (None, attention.window):
        unsupported.append("local layers with different windows")


def _check_moe(moe: MoEFeedForward, spec: NetworkSpec, unsupported: list[str]) -> None:
    router, experts = moe.router, moe.experts
    if type(router) is not TopKRouter:
        unsupported.append(f"router {type(router).__name__} (only TopKRouter maps)")
        return
    if router.score != "softmax":
        unsupported.append(f"router score={router.score!r} (Mixtral and Mellum score with a softmax)")
    if router.route_scale != 1.0:
        unsupported.append(f"router route_scale={router.route_scale}")
    # A non-zero expert_bias is a value, not architecture: export checks it on the weights it writes.
    if moe.shared_experts is not None:
        unsupported.append("num_shared_experts > 0 (Mixtral and Mellum have no shared expert)")
    if moe.dispatch.capacity_factor is not None:
        unsupported.append(f"dispatch capacity_factor={moe.dispatch.capacity_factor} (transformers' MoE is dropless)")
    if spec.num_experts and (spec.num_experts, spec.top_k, spec.expert_hidden, spec.renormalize) != (
        router.num_experts, router.top_k, experts.hidden_dim, router.renormalize
    ):
        unsupported.append("MoE layers that differ from each other")
    spec.num_experts, spec.top_k = router.num_experts, router.top_k
    spec.expert_hidden, spec.renormalize = experts.hidden_dim, router.renormalize
