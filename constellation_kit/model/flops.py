"""Parameter and FLOP counts that know about sparsity: what one token actually passes through."""

from torch import nn


def active_parameters(network: nn.Module) -> int:
    """Parameters one token passes through: all, except what a module says it leaves unused.

    A sparsely-activated module reports its own count through an ``active_parameters()`` method
    (an MoE layer: its router, shared experts and k of its E routed experts); its parameters are
    then not counted again.
    """

    def visit(module: nn.Module) -> int:
        if module is not network and callable(getattr(module, "active_parameters", None)):
            return int(module.active_parameters())
        own = sum(p.numel() for p in module.parameters(recurse=False))
        return own + sum(visit(child) for child in module.children())

    return visit(network)


def training_flops_per_token(network: nn.Module, seq_len: int) -> float:
    """Forward + backward FLOPs per token: ``6 · N_active`` for the matmuls, plus causal attention.

    PaLM (Chowdhery et al. 2022, App. B) counts ``12 · L · H · d_head · T`` for attention scores
    and values over full context; causal attention sees ``T / 2`` keys on average, and a sliding
    window of W keys fewer still: an attention module may say how many through
    ``attended_context(seq_len)``. The input embedding is a lookup, not a matmul, and is not counted;
    the LM head is (also when tied to the embedding, since its matmul runs).
    """
    active = active_parameters(network)
    embedding = getattr(network, "token_embedding", None)
    if embedding is not None and getattr(network, "lm_head", None) is not None:
        active -= embedding.weight.numel()
    attention = 0.0
    for block in getattr(network, "blocks", []):
        attn = getattr(block, "attention", None)
        attn = getattr(attn, "_checkpoint_wrapped_module", attn)  # see through activation checkpointing
        if attn is None or not hasattr(attn, "n_heads"):
            continue
        context = attn.attended_context(seq_len) if hasattr(attn, "attended_context") else seq_len / 2
        attention += 12 * attn.n_heads * attn.head_dim * context
    return 6.0 * active + attention
