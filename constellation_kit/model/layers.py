"""Linear and embedding layers that own their initialisation.

Each parameter is initialised by the module that owns it, so the result does not depend on the
order in which ``reset_parameters()`` is called: Lightning materialises meta-device modules parents
first, :meth:`Transformer.init_weights` and FSDP2 materialisation walk in other orders. (A parent
that re-initialises its child's ``nn.Linear`` would be silently overwritten by the child's
Kaiming default whenever the child comes later.)
"""

import torch
from torch import nn


class Linear(nn.Linear):
    """``nn.Linear`` initialised N(0, ``init_std``) with zero bias (GPT-2 / Llama), bias off by default.

    (..., in_features) -> (..., out_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        init_std: float = 0.02,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.init_std = init_std  # set before nn.Linear.__init__, which calls reset_parameters()
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Embedding(nn.Embedding):
    """``nn.Embedding`` initialised N(0, ``init_std``) instead of PyTorch's N(0, 1). (...) -> (..., dim)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        init_std: float = 0.02,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.init_std = init_std
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)
