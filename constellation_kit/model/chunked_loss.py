"""Next-token cross-entropy through the LM head without materialising all logits.

At XL size a micro-batch's logits are ``tokens x vocab`` fp32 values (8,192 x 32,768 x 4 B = 1 GiB,
then as much again for their gradient). This computes the loss one chunk of rows at a time and, as
Liger-Kernel's fused linear cross-entropy does (Hsu et al. 2024, https://arxiv.org/abs/2410.10989),
computes the gradients for the hidden states and the head weight in the same pass, so backward
needs no second trip through the vocabulary. Peak extra memory: one ``chunk x vocab`` block.
"""

import torch
import torch.nn.functional as F


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size: int, chunk_size: int, ignore_index: int):
        # hidden (N, D), weight (V_padded, D), targets (N,)
        valid = targets != ignore_index
        count = valid.sum().clamp(min=1).float()
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h = hidden[rows]
            logits = (h @ weight[:vocab_size].T).float()  # (C, V): the only chunk-sized buffer
            t = targets[rows]
            ok = valid[rows]
            safe_t = torch.where(ok, t, torch.zeros_like(t))
            log_z = torch.logsumexp(logits, dim=-1)  # (C,)
            loss += ((log_z - logits.gather(1, safe_t[:, None]).squeeze(1)) * ok).sum()
            # d(mean loss)/d(logits) = (softmax - onehot) / count on valid rows, 0 elsewhere.
            grad_logits = torch.exp(logits - log_z[:, None])
            grad_logits[torch.arange(len(t), device=t.device), safe_t] -= 1.0
            grad_logits *= (ok.float() / count)[:, None]
            grad_hidden[rows] = (grad_logits.to(h.dtype) @ weight[:vocab_size]).to(hidden.dtype)
            grad_weight[:vocab_size] += grad_logits.T @ h.float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None, None


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int | None = None,
    chunk_size: int = 4096,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` under ``hidden @ weight[:vocab_size].T``, chunk by chunk.

    ``hidden`` (..., D), ``weight`` (V_padded, D), ``targets`` (...) with ``ignore_index`` skipped.
    Equal (fp32, to rounding) to ``F.cross_entropy(F.linear(hidden, weight)[..., :vocab_size].float(), targets)``.
    """
    vocab_size = weight.shape[0] if vocab_size is None else vocab_size
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
        # Evaluation: no gradients to precompute, so plain chunking is enough.
        flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, flat_h.shape[0], chunk_size):
            logits = F.linear(flat_h[start : start + chunk_size], weight[:vocab_size]).float()
            total += F.cross_entropy(logits, flat_t[start : start + chunk_size], ignore_index=ignore_index, reduction="sum")
        return total / (flat_t != ignore_index).sum().clamp(min=1)
    return _ChunkedLinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), vocab_size, chunk_size, ignore_index
    )
