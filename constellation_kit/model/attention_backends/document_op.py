"""Per-document causal attention on CPU as one opaque operator, so a compiled block keeps one graph.

SDPA's per-document path (:func:`~constellation_kit.model.attention_backends.sdpa.per_document`)
stacks documents of equal length, so its intermediate shapes depend on the data (how many
documents of each length), which ``torch.compile`` can only meet with a graph break. Its *outputs*
have static shapes, though: the queries' (B, H, T, hd) and a (B, H, T) log-sum-exp. Registered as
custom operators with those fake (shape-only) kernels, dynamo and inductor treat forward and
backward as one extern kernel each, and the data-dependent bookkeeping runs eagerly inside.

Both directions call SDPA's own fused CPU kernels (``_scaled_dot_product_flash_attention_for_cpu``
and its backward), memory-linear in the document length, with the forward's log-sum-exp saved for
the backward exactly as SDPA's autograd would. Eager code never comes here: it calls
``per_document`` directly. (A custom operator runs below autograd, so it cannot differentiate a
composite of other ops: the backward kernel is called by hand.)
"""

import torch

from constellation_kit.model.layout import SequenceLayout

_forward_kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_backward_kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(0, 1)  # (B, heads, T, ...) -> (B*T, heads, ...)


def _untokens(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    batch, heads, seq_len = like.shape[:3]
    return x.view(batch, seq_len, heads, *like.shape[3:]).transpose(1, 2)  # (B*T, heads, ...) -> (B, heads, T, ...)


def _stack(x_tokens: torch.Tensor, index: torch.Tensor, count: int, length: int) -> torch.Tensor:
    """(B*T, heads, ...) tokens -> (n, heads, L, ...): one group's n documents, each a batch entry."""
    return x_tokens[index].view(count, length, *x_tokens.shape[1:]).transpose(1, 2).contiguous()


def _unstack(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(0, 1)  # (n, heads, L, ...) -> (n*L, heads, ...)


def _repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.repeat_interleave(n_heads // x.shape[1], dim=1)  # query head h reads kv head h // group


@torch.library.custom_op("constellation::document_attention", mutates_args=())
def document_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, document_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention within each document of ``document_ids`` (B, T).

    q (B, H, T, hd), k and v (B, Hkv, T, hd) -> output (B, H, T, hd) and log-sum-exp (B, H, T) fp32.
    """
    n_heads = q.shape[1]
    groups, inverse = SequenceLayout.from_document_ids(document_ids).document_groups
    q_t, k_t, v_t = _tokens(q), _tokens(k), _tokens(v)
    outs, lses = [], []
    for g in groups:
        out, lse = _forward_kernel(
            _stack(q_t, g.index, g.count, g.length),
            _repeat_kv(_stack(k_t, g.index, g.count, g.length), n_heads),
            _repeat_kv(_stack(v_t, g.index, g.count, g.length), n_heads),
            0.0,
            True,
        )
        outs.append(_unstack(out))
        lses.append(_unstack(lse.unsqueeze(-1)))
    out = _untokens(torch.cat(outs)[inverse], q).contiguous()
    lse = _untokens(torch.cat(lses)[inverse], q[..., :1]).squeeze(-1).contiguous()
    return out, lse


# Fakes must promise the strides the kernels deliver (contiguous), not the inputs' (q, k, v are
# transposed views of the projections): inductor checks them.
@document_attention.register_fake
def _(q, k, v, document_ids):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("constellation::document_attention_backward", mutates_args=())
def document_attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    document_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`document_attention`'s output with respect to q, k and v."""
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    groups, inverse = SequenceLayout.from_document_ids(document_ids).document_groups
    q_t, k_t, v_t, out_t, grad_t = (_tokens(x) for x in (q, k, v, out, grad))
    lse_t = _tokens(lse.unsqueeze(-1))
    grads: tuple[list, list, list] = ([], [], [])
    for g in groups:

        def stack(x):
            return _stack(x, g.index, g.count, g.length)

        dq, dk, dv = _backward_kernel(
            stack(grad_t),
            stack(q_t),
            _repeat_kv(stack(k_t), n_heads),
            _repeat_kv(stack(v_t), n_heads),
            stack(out_t),
            stack(lse_t).squeeze(-1),
            0.0,
            True,
        )
        # A key/value head's gradient is the sum over the query heads that read it.
        dk, dv = (d.unflatten(1, (n_kv_heads, n_heads // n_kv_heads)).sum(2) for d in (dk, dv))
        for collected, d in zip(grads, (dq, dk, dv)):
            collected.append(_unstack(d))
    return tuple(_untokens(torch.cat(d)[inverse], x).contiguous() for d, x in zip(grads, (q, k, v)))


@document_attention_backward.register_fake
def _(grad, q, k, v, out, lse, document_ids):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, grad, _grad_lse):
    q, k, v, document_ids, out, lse = ctx.saved_tensors
    return (*document_attention_backward(grad.contiguous(), q, k, v, out, lse, document_ids), None)


document_attention.register_autograd(_backward, setup_context=_setup_context)
