"""Which parameters get weight decay."""

from typing import Any

from torch import nn


def weight_decay_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Split parameters into a ``decay`` group and a ``no_decay`` group (``weight_decay=0``).

    Decoupled weight decay (Loshchilov & Hutter 2019) pulls weights towards zero, which suits the
    matrices of linear maps but not:

    - norm gains: their neutral value is 1, and decaying them to 0 shrinks activations;
    - biases: a shift, not a scale; decaying them adds no useful capacity control;
    - embedding rows: each row is updated only when its token occurs, yet decay shrinks every row
      every step, so rare tokens' embeddings would wither towards zero.

    That is the GPT-2 / nanoGPT / Llama convention. The ``decay`` group carries no
    ``weight_decay`` key, so it takes the optimizer's configured value.
    """
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or id(param) in embedding_params else decay).append(param)
    return [
        {"params": decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
