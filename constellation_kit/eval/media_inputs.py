"""Image and audio files as a trained model's inputs: the encoder tensors and the placeholder tokens.

A prompt with an image (or a sound) is laid out exactly as a training item begins
(:mod:`constellation_kit.data.media_rows`): the modality's placeholder token repeated once per
encoder output token, then the text. The file is decoded and transformed as the run's data module
does for validation: timm's deterministic resize and centre crop with the vision backbone's mean and
std, at the run's ``image_size``; audio resampled to 16 kHz mono and cropped from its start (or
zero-padded) to the run's ``audio_seconds``, the encoder computing the log-mel itself. The settings
are read from the checkpoint's own data module, so what a prompt's image looks like to the model is
what validation images looked like.

Batches use the keys :class:`~constellation_kit.train.MultimodalLanguageModel` reads (those of
:func:`~constellation_kit.data.multimodal_dataset.collate_mixed`): ``image`` (M, 3, H, W),
``audio`` (M, samples), and ``<modality>_mask`` (B, T) marking each item's placeholders in row order.
"""

from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from tokenizers import Tokenizer

from constellation_kit.data.media import MediaError, decode_audio, decode_image, fit_length, image_transform
from constellation_kit.data.multimodal_datamodule import PLACEHOLDERS
from constellation_kit.errors import ConfigError

MODALITIES = ("image", "audio")
"""Media a prompt may carry, in the order their placeholders precede its text."""


class MediaInputs:
    """Turns a prompt's image/audio files into encoder inputs and placeholder token ids, for one checkpoint.

    ``load(modality, path)`` gives an ``image`` (3, H, W) or ``audio`` (samples,) tensor;
    ``placeholders(modality)`` the ids that stand for it in the prompt.

    Args:
        module: the trained module; its ``encoders`` say which modalities it can see.
        datamodule: the run's data module (constructed, not set up): its image and audio settings.
        tokenizer: the checkpoint's tokenizer, holding the placeholder tokens.
    """

    def __init__(self, module: LightningModule, datamodule: LightningDataModule, tokenizer: Tokenizer) -> None:
        self.datamodule = datamodule
        self.tokenizer = tokenizer
        encoders = getattr(module, "encoders", None) or {}
        self.modalities = tuple(m for m in MODALITIES if m in encoders)
        self._image_transform = None

    def check(self, modality: str) -> None:
        """Raise :class:`ConfigError` unless this checkpoint can take ``modality`` in a prompt."""
        if modality not in self.modalities:
            encoder = {"image": "vision_encoder", "audio": "audio_encoder"}[modality]
            raise ConfigError(
                f"this checkpoint's model has no {encoder}, so it cannot take an {modality}: "
                f"generate from a multimodal run (e.g. recipes/tiny.yaml) or drop --{modality}"
            )
        if self.tokenizer.token_to_id(PLACEHOLDERS[modality]) is None:
            raise ConfigError(f"the checkpoint's tokenizer has no {PLACEHOLDERS[modality]} token for the {modality}")

    def placeholders(self, modality: str) -> list[int]:
        """The prompt's leading ids for one item: its placeholder, once per encoder output token."""
        self.check(modality)
        count = self.datamodule.num_placeholders[modality]
        return [self.tokenizer.token_to_id(PLACEHOLDERS[modality])] * count

    def placeholder_id(self, modality: str) -> int:
        return self.tokenizer.token_to_id(PLACEHOLDERS[modality])

    def load(self, modality: str, path: str | Path) -> torch.Tensor:
        """The encoder input for one file, as validation prepares it; a bad file raises :class:`ConfigError`."""
        self.check(modality)
        data = self.datamodule
        try:
            if modality == "image":
                if self._image_transform is None:
                    self._image_transform = image_transform(
                        data.image_backbone, data.image_size, False, None, data.image_backbone_kwargs
                    )
                return self._image_transform(decode_image(path, data.max_media_bytes))  # (3, H, W)
            waveform = decode_audio(path, max_bytes=data.max_media_bytes)
            return fit_length(waveform, data.audio_samples, 0)  # (samples,): the start, as validation crops
        except MediaError as error:
            raise ConfigError(f"cannot use {path} as the prompt's {modality}: {error}") from error


def media_batch(
    tokens: torch.Tensor, valid: torch.Tensor, items: list[dict[str, torch.Tensor]], placeholder_ids: dict[str, int]
) -> dict[str, torch.Tensor]:
    """The batch dict the multimodal module's ``embedding_editor`` reads, for prompts (B, T).

    ``items[b]`` holds row b's encoder inputs by modality; ``valid`` (B, T) marks real tokens (not
    padding). A modality no row carries is left out, so its placeholders stay plain tokens.
    """
    batch: dict[str, torch.Tensor] = {"tokens": tokens}
    for modality in MODALITIES:
        stacked = [row[modality] for row in items if modality in row]
        if not stacked:
            continue
        batch[modality] = torch.stack(stacked).to(tokens.device)  # (M, ...) in row order
        batch[f"{modality}_mask"] = (tokens == placeholder_ids[modality]) & valid
        # No caption to align with at generation: -1 everywhere (what collate_grounding writes too).
        batch[f"{modality}_caption"] = torch.full_like(tokens, -1)
    return batch
