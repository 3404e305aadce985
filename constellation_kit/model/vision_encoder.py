"""The vision encoder: any timm backbone, returning its patch tokens."""

import logging
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from constellation_kit.errors import ConfigError
from constellation_kit.model.pooling import pool_tokens

log = logging.getLogger(__name__)


class TimmVisionEncoder(nn.Module):
    """Images (B, 3, H, W) -> patch tokens (B, N, out_dim) from a timm backbone's ``forward_features``.

    A ViT-style backbone returns (B, prefix + patches, D): the prefix tokens (class, register or
    distillation tokens, ``num_prefix_tokens`` of them) are dropped, since the language model reads
    the image region by region. A CNN returns a feature map (B, D, h, w), flattened to h*w tokens.
    ``num_tokens`` average-pools the patches to a fixed budget (2-D when both counts are square).

    Weights are never downloaded at run time: ``pretrained`` stays false unless ``weights_path``
    names a local file (a timm/PyTorch state dict), which :meth:`reset_parameters` loads, so a
    meta-device build followed by ``to_empty`` + ``reset_parameters`` ends with those weights.

    Args:
        backbone: a timm model name, e.g. ``vit_small_patch16_224`` or ``resnet18``.
        num_tokens: pool the patch tokens to this many; ``None`` keeps them all.
        weights_path: local checkpoint to load into the backbone (``None``: random init): a timm/PyTorch
            state dict file, or a transformers CLIP checkpoint directory for a ``vit_*_clip_quickgelu_*``
            backbone of the same sizes (see :mod:`constellation_kit.interop.encoders`).
        backbone_kwargs: passed to ``timm.create_model`` (``img_size``, ``patch_size``, ``depth``...).
    """

    def __init__(
        self,
        backbone: str = "vit_tiny_patch16_224",
        num_tokens: int | None = None,
        weights_path: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not timm.is_model(backbone):
            raise ConfigError(f"vision backbone {backbone!r} is not a timm model name (see timm.list_models())")
        self.backbone_name = backbone
        self.num_tokens = num_tokens
        self.weights_path = weights_path
        # num_classes=0: no classifier head, whose weights would be unused (and unsynced under DDP).
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, **(backbone_kwargs or {}))
        self.out_dim: int = self.backbone.num_features
        self.num_prefix_tokens: int = getattr(self.backbone, "num_prefix_tokens", 0)
        if weights_path is not None and _device_of(self).type != "meta":
            self._load_weights()

    @property
    def blocks(self) -> nn.Module | None:
        """The backbone's repeated layers (a ViT's transformer blocks), for a parallelize step to wrap one by
        one; ``None`` for a backbone without ``blocks`` (a ResNet), which is then handled whole."""
        return getattr(self.backbone, "blocks", None)

    def reset_parameters(self) -> None:
        """Re-initialise the backbone (timm's own ``init_weights`` when it has one), then load ``weights_path``."""
        init = getattr(self.backbone, "init_weights", None)
        if callable(init):
            init()
        else:
            for module in self.backbone.modules():
                if module is not self.backbone and callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
        if self.weights_path is not None:
            self._load_weights()

    def _load_weights(self) -> None:
        path = Path(self.weights_path)
        if path.is_dir():
            # A transformers CLIP checkpoint directory: converted to this (CLIP-style timm ViT) backbone's names.
            from constellation_kit.interop.encoders import clip_vision_to_timm  # lazy: only needed here

            state = clip_vision_to_timm(path, self.backbone)
        elif not path.is_file():
            raise ConfigError(f"vision weights_path {self.weights_path!r} does not exist: point it at a local state "
                              "dict, or a transformers CLIP checkpoint directory")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        # The classifier head is removed (num_classes=0), so its weights are expected leftovers.
        unexpected = [k for k in unexpected if not k.startswith(("head.", "fc.", "classifier."))]
        if missing or unexpected:
            raise ConfigError(
                f"{path} does not fit {self.backbone_name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        log.info("Loaded vision weights from %s", path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(images)
        grid = None
        if features.ndim == 4:  # CNN feature map (B, D, h, w)
            grid = features.shape[-2:]
            features = features.flatten(2).transpose(1, 2)  # (B, h*w, D)
        else:  # (B, prefix + N, D)
            features = features[:, self.num_prefix_tokens :]
            grid = getattr(getattr(self.backbone, "patch_embed", None), "grid_size", None)
        return pool_tokens(features, self.num_tokens, tuple(grid) if grid is not None else None)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
