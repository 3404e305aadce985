"""Which parameters get weight decay."""

from fnmatch import fnmatch
from typing import Any

from torch import nn


def _declared_no_decay(model: nn.Module) -> set[int]:
    """Ids of the parameters that a submodule's own ``no_weight_decay()`` names.

    timm models declare their exempt parameters this way (a ViT returns ``{'pos_embed',
    'cls_token', 'reg_token', 'dist_token'}``); names are relative to the module that declares
    them and may be ``fnmatch`` patterns, as ``timm.optim.param_groups_weight_decay`` reads them.
    Names of absent parameters (a ViT without ``dist_token``) or of buffers simply match nothing.
    Every module in the tree is asked, not just the root, because here the timm backbone sits
    deep inside the LightningModule.
    """
    exempt: set[int] = set()
    for module in model.modules():
        declared = getattr(module, "no_weight_decay", None)
        if not callable(declared):
            continue
        patterns = set(declared())
        for name, param in module.named_parameters():
            if any(fnmatch(name, pattern) for pattern in patterns):
                exempt.add(id(param))
    return exempt


def weight_decay_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Split parameters into a ``decay`` group and a ``no_decay`` group (``weight_decay=0``).

    Decoupled weight decay (Loshchilov & Hutter 2019) pulls weights towards zero, which suits the
    matrices of linear maps but not:

    - norm gains: their neutral value is 1, and decaying them to 0 shrinks activations;
    - biases: a shift, not a scale; decaying them adds no useful capacity control;
    - embedding rows: each row is updated only when its token occurs, yet decay shrinks every row
      every step, so rare tokens' embeddings would wither towards zero;
    - whatever a submodule lists in its ``no_weight_decay()`` (timm's convention): a ViT's learned
      position embedding and class/register tokens, which are embeddings too, only 2-D or 3-D.

    That is the GPT-2 / nanoGPT / Llama convention, plus timm's. The ``decay`` group carries no
    ``weight_decay`` key, so it takes the optimizer's configured value.
    """
    exempt = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} | _declared_no_decay(model)
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or id(param) in exempt else decay).append(param)
    return [
        {"params": decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
