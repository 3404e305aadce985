"""The multimodal LightningModule: encoders and projectors in front of the language model.

::

    image (M, 3, H, W) ──► vision encoder ──► (M, N, E) ──► projector ──► (M, N, D) ─┐
    audio (M, samples) ──► audio encoder  ──► (M, N, E) ──► projector ──► (M, N, D) ─┤ written over the
    tokens (B, T) ───────► token embedding ──► (B, T, D) ──────────────────────────────┴► placeholders ──► LM

Everything after the input embeddings (the blocks, the LM loss, whatever extra losses the base
module adds) is :class:`~constellation_kit.train.LanguageModel`'s: this class only overrides how
the input embeddings are built (:meth:`write_media`, called inside the network's forward), adds the optional alignment loss, and
reports the grounding check at the end of each validation.
"""

from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.optim import Optimizer

from constellation_kit.data.media import SKIP_REASONS
from constellation_kit.data.packing import IGNORE_INDEX
from constellation_kit.model.balance import BalanceLoss
from constellation_kit.model.placeholders import write_at_placeholders
from constellation_kit.model.projector import MLPProjector
from constellation_kit.train.module import LanguageModel, NetworkFactory, SchedulerFactory

EncoderFactory = Callable[[], nn.Module]
"""Builds an encoder; the module it returns has an ``out_dim`` attribute (its token width)."""
ProjectorFactory = Callable[[int, int], nn.Module]
"""Builds a projector from ``(encoder.out_dim, d_model)``."""


class MultimodalLanguageModel(LanguageModel):
    """Next-token prediction over text and captioned media, media embedded by encoders.

    Batches are those of :class:`~constellation_kit.data.MultimodalDataModule`: besides
    ``tokens``/``targets``/``document_ids`` (B, T), ``image`` (M, 3, H, W) and ``audio`` (M, samples)
    with boolean ``image_mask``/``audio_mask`` (B, T) marking their placeholder tokens. Each present
    encoder embeds its items, its projector maps them to ``d_model``, and the results replace the
    placeholders' token embeddings. An encoder set to ``null`` leaves its placeholders as plain
    tokens (the text-only ablation).

    Logged besides the base metrics: ``train/alignment_loss`` (when enabled) and, after every
    validation, ``val/image_caption_acc`` and ``val/audio_caption_acc``: the fraction of held-out
    items whose own caption the model finds most likely among the data's ``caption_choices``
    candidates (chance is ``1 / caption_choices``); and ``data/skipped_items`` with
    ``data/skipped_<reason>``, running totals of the media items skipped so far: the data module's
    setup scan plus the training batches' blanks (``media_skipped``), summed over loader workers
    and ranks.

    ``network``, ``vocab_size``, ``optimizer``, ``scheduler`` and ``balance`` are as in :class:`LanguageModel`.

    Args:
        vision_encoder: factory for the image encoder (``None``: images are not seen).
        audio_encoder: factory for the audio encoder (``None``: audio is not heard).
        vision_projector: factory called with ``(vision_encoder.out_dim, d_model)``.
        audio_projector: factory called with ``(audio_encoder.out_dim, d_model)``.
        freeze_vision_encoder: keep the vision encoder's weights fixed (and in eval mode), e.g. a
            pretrained backbone loaded from ``weights_path``; the projector still trains.
        freeze_audio_encoder: the same for the audio encoder.
        alignment_loss: an extra loss on (media, text) embedding pairs, e.g.
            :class:`~constellation_kit.train.InfoNCEAlignment`; ``None`` disables it.
        alignment_weight: its coefficient in the training loss.
        loss_chunk_size: as in :class:`LanguageModel`: the LM head and loss this many tokens at a time.
        init_from: as in :class:`LanguageModel`: the language model's start from a transformers checkpoint.
    """

    not_hyperparameters = (*LanguageModel.not_hyperparameters, "vision_encoder", "audio_encoder", "vision_projector",
                           "audio_projector", "alignment_loss")

    def __init__(
        self,
        network: NetworkFactory,
        vocab_size: int,
        optimizer: Callable[[Iterable], Optimizer] = torch.optim.AdamW,
        scheduler: SchedulerFactory | None = None,
        balance: list[BalanceLoss] | None = None,
        vision_encoder: EncoderFactory | None = None,
        audio_encoder: EncoderFactory | None = None,
        vision_projector: ProjectorFactory = MLPProjector,
        audio_projector: ProjectorFactory = MLPProjector,
        freeze_vision_encoder: bool = False,
        freeze_audio_encoder: bool = False,
        alignment_loss: nn.Module | None = None,
        alignment_weight: float = 0.1,
        loss_chunk_size: int | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__(network, vocab_size, optimizer, scheduler, balance, loss_chunk_size, init_from)
        self.encoder_factories = {"image": vision_encoder, "audio": audio_encoder}
        self.projector_factories = {"image": vision_projector, "audio": audio_projector}
        self.frozen = {"image": freeze_vision_encoder, "audio": freeze_audio_encoder}
        self.alignment_loss = alignment_loss
        self.alignment_weight = alignment_weight
        self.encoders: nn.ModuleDict | None = None
        self.projectors: nn.ModuleDict | None = None
        self._alignment_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._skipped_here: torch.Tensor | None = None  # this rank's blanks so far, by SKIP_REASONS

    # -- building ----------------------------------------------------------------------------

    def build_media(self, d_model: int) -> tuple[nn.ModuleDict, nn.ModuleDict]:
        """Fresh encoders and their projectors into ``d_model``, by modality (on the current default device)."""
        encoders, projectors = nn.ModuleDict(), nn.ModuleDict()
        for modality, factory in self.encoder_factories.items():
            if factory is None:
                continue
            encoder = factory()
            encoders[modality] = encoder
            projectors[modality] = self.projector_factories[modality](encoder.out_dim, d_model)
            if self.frozen[modality]:
                encoder.requires_grad_(False)
        return encoders, projectors

    def check_config(self) -> None:
        """Build network, encoders and projectors once on the meta device (raises their ConfigErrors)."""
        with torch.device("meta"):
            network = self.network_factory(self.vocab_size)
            self.build_media(network.d_model)
        self.check_init_from(network)

    def configure_model(self) -> None:
        """The network, then the encoders and projectors, on the default device (meta under a sharding strategy)."""
        super().configure_model()
        if self.encoders is None:
            self.encoders, self.projectors = self.build_media(self.network.d_model)

    def parallel_parts(self) -> list[nn.Module]:
        """The network, each encoder and each projector: sharded under one policy, encoders block by block.

        Encoders and projectors are their own FSDP roots, called directly (outside the network's
        forward), which FSDP2's forward hooks need.
        """
        return [*super().parallel_parts(), *self.encoders.values(), *self.projectors.values()]

    def train(self, mode: bool = True) -> "MultimodalLanguageModel":
        super().train(mode)
        for modality, encoder in (self.encoders or {}).items():
            if self.frozen[modality]:
                encoder.eval()  # a frozen backbone keeps its BatchNorm statistics and skips dropout
        return self

    # -- the forward pass --------------------------------------------------------------------

    def embedding_editor(self, batch: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        return partial(self.write_media, batch)

    def input_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings (B, T, d_model) with each encoder's projected tokens over its placeholders.

        For single-device use (tests, notebooks); training goes through :meth:`embedding_editor`, which
        does the same inside the network's forward, as FSDP2 needs.
        """
        return self.write_media(batch, self.network.embed(batch["tokens"]))

    def write_media(self, batch: dict[str, torch.Tensor], embeddings: torch.Tensor) -> torch.Tensor:
        """``embeddings`` (B, T, d_model) with each encoder's projected tokens written over its placeholders."""
        self._alignment_pairs = []
        for modality, encoder in self.encoders.items():
            media, mask = batch.get(modality), batch.get(f"{modality}_mask")
            if media is None or mask is None or (media.shape[0] == 0 and not mask.any()):
                if isinstance(encoder, FSDPModule) and media is not None:
                    embeddings = embeddings + self._idle_encoder_term(modality, media, embeddings)
                continue
            projected = self._embed_media(modality, media)  # (M, N, D)
            repeat = int(batch.get("num_choices", 1))  # grounding batches score one item against K captions
            if repeat > 1:
                projected = projected.repeat_interleave(repeat, dim=0)
            elif self.alignment_loss is not None and media.shape[0] > 0:
                text = _caption_means(embeddings, batch[f"{modality}_caption"], media.shape[0])  # (M, D)
                self._alignment_pairs.append((projected.mean(dim=1), text))
            embeddings = write_at_placeholders(embeddings, mask, projected, modality)
        return embeddings

    def _idle_encoder_term(self, modality: str, media: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Zero, computed by running the encoder and projector on one blank item (shape (1, *item)).

        Under FSDP2 every rank must run every sharded module each step: its forward all-gathers the
        parameters and its backward reduce-scatters the gradients, collectives all ranks join. A rank
        whose micro-batch holds no item of this modality would skip them and hang the others; instead
        it encodes a blank and adds ``0 x`` the result, so its gradients are exact zeros and the
        collectives line up (DeepSpeed ZeRO-3 users of LLaVA-style models do the same).
        """
        blank = media.new_zeros((1, *media.shape[1:]))
        return 0.0 * self._embed_media(modality, blank).sum().to(embeddings.dtype)

    def _embed_media(self, modality: str, media: torch.Tensor) -> torch.Tensor:
        """Items (M, ...) -> their projected tokens (M, N, d_model); a frozen encoder runs without gradient."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen[modality]):
            encoded = self.encoders[modality](media)  # (M, N, E)
        return self.projectors[modality](encoded)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | dict:
        self._log_skipped_items(batch)
        return super().training_step(batch, batch_idx)

    def _log_skipped_items(self, batch: dict[str, torch.Tensor]) -> None:
        """Add the batch's blanks to this rank's running count and log the total over all ranks.

        A blank is counted in the loader worker that made it, whose counters die with it, so the
        count rides in the batch (``media_skipped``). The setup scan's skips, the same on every rank,
        are added by rank 0 alone. One all-reduce of a (len(SKIP_REASONS),) vector per written log step
        (every rank agrees which those are).
        """
        skipped = batch.get("media_skipped")
        if skipped is None:
            return
        self._skipped_here = skipped if self._skipped_here is None else self._skipped_here + skipped
        if not self._logger_writes_this_step():  # a running total: only the written steps need it
            return
        total = self._skipped_here.clone()
        datamodule = getattr(self.trainer, "datamodule", None)
        scanned = getattr(datamodule, "scan_skipped", None)
        if scanned and self.trainer.global_rank == 0:
            total += torch.tensor([scanned.get(r, 0) for r in SKIP_REASONS], device=total.device)
        total = self.trainer.strategy.reduce(total, reduce_op="sum").float()
        # Tensors, not numbers: Lightning reads them (one host sync) only when it writes a log line.
        # Every reason, zeros too: the same keys on every rank and every step, and a clean run says so.
        self.log("data/skipped_items", total.sum())
        self.log_dict({f"data/skipped_{reason}": count for reason, count in zip(SKIP_REASONS, total)})

    def _loss(
        self, batch: dict[str, torch.Tensor], logits_needed: bool = True
    ) -> tuple[torch.Tensor, list, torch.Tensor | None]:
        loss, routing, logits = super()._loss(batch, logits_needed)
        if self.alignment_loss is not None and self._alignment_pairs:
            alignment = torch.stack([self.alignment_loss(m, t) for m, t in self._alignment_pairs]).mean()
            if self._logger_writes_this_step():  # in training, only the written steps'
                self.log(f"{'train' if self.training else 'val'}/alignment_loss", alignment)
            loss = loss + self.alignment_weight * alignment
        self._alignment_pairs = []
        return loss, routing, logits

    # -- the grounding check -----------------------------------------------------------------

    @torch.no_grad()
    def caption_choices_correct(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """For a grounding batch of N items x K candidate rows: (N,) bool, whether the item's own
        caption has the highest summed log-likelihood given the item."""
        hidden = self._network_output(batch).hidden  # (N*K, T, D)
        targets = batch["targets"]
        # Only the candidate captions are scored (a fifth of the positions): only they go through the head.
        scored = targets != IGNORE_INDEX
        nll = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
        nll[scored] = F.cross_entropy(self.network.logits(hidden[scored]).float(), targets[scored], reduction="none")
        log_likelihood = -nll.sum(dim=1).view(-1, int(batch["num_choices"]))  # (N, K)
        return log_likelihood.argmax(dim=1) == batch["answer"]

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "grounding_dataloader") or self.trainer.sanity_checking:
            return
        for modality in ("image", "audio"):
            loader = datamodule.grounding_dataloader(modality)
            if loader is None:
                continue
            correct = []
            for batch in loader:
                batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                correct.append(self.caption_choices_correct(batch))
            self.log(f"val/{modality}_caption_acc", torch.cat(correct).float().mean(), prog_bar=True)


def _caption_means(embeddings: torch.Tensor, caption_index: torch.Tensor, num_items: int) -> torch.Tensor:
    """Mean token embedding (M, D) of each item's caption; ``caption_index`` (B, T) names the item of each token."""
    selected = caption_index >= 0
    index = caption_index[selected]  # (K,)
    sums = embeddings.new_zeros(num_items, embeddings.shape[-1]).index_add_(0, index, embeddings[selected])
    counts = torch.bincount(index, minlength=num_items).clamp(min=1).unsqueeze(1)
    return sums / counts
