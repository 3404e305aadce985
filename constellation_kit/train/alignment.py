"""Contrastive alignment of media and text embeddings: one latent space (ImageBind-style)."""

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCEAlignment(nn.Module):
    """Symmetric InfoNCE between paired media and text embeddings, both (M, D) -> scalar loss.

    ImageBind (Girdhar et al. 2023, eq. 1) binds every modality to one space this way: L2-normalise
    both sides, score all pairs by cosine similarity over a temperature, and train each media item to
    pick its own text among the batch's texts and vice versa (CLIP's symmetric loss, Radford et al.
    2021). Fewer than two pairs give no negatives, so the loss is zero then.

    Args:
        temperature: the softmax temperature tau (ImageBind uses 0.05-0.07).
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, media: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if media.shape[0] < 2:
            return media.sum() * 0.0
        media, text = F.normalize(media.float(), dim=-1), F.normalize(text.float(), dim=-1)
        logits = media @ text.T / self.temperature  # (M, M): similarity of item i to text j
        labels = torch.arange(len(media), device=media.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
