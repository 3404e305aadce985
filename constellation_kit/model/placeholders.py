"""Writing projected media embeddings into the placeholder positions of the token embeddings."""

import torch

from constellation_kit.errors import ConfigError


def write_at_placeholders(
    embeddings: torch.Tensor, placeholder_mask: torch.Tensor, media: torch.Tensor, modality: str
) -> torch.Tensor:
    """Return ``embeddings`` (B, T, D) with the ``True`` positions of ``placeholder_mask`` (B, T)
    replaced, in row-major order, by the rows of ``media`` (M, N, D): item 0's N tokens first.

    The data lays out each item's N placeholder tokens contiguously and orders the items the same
    way the media tensor is stacked, so a flat ``masked_scatter`` is the whole job (LLaVA's
    ``_merge_input_ids_with_image_features`` does the same). The result is out of place, so
    gradients flow both to the token embeddings elsewhere and to ``media``.

    Raises:
        ConfigError: the placeholder count differs from M x N, naming both numbers.
    """
    placeholders = int(placeholder_mask.sum())
    produced = media.shape[0] * media.shape[1]
    if placeholders != produced:
        raise ConfigError(
            f"the batch has {placeholders} {modality} placeholder tokens but the {modality} encoder produced "
            f"{produced} embeddings ({media.shape[0]} items x {media.shape[1]} tokens): make the data's "
            f"{modality}_tokens equal the {modality} encoder's num_tokens"
        )
    mask = placeholder_mask.unsqueeze(-1).expand_as(embeddings)  # (B, T, D)
    return embeddings.masked_scatter(mask, media.to(embeddings.dtype))
