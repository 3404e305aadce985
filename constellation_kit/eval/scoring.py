"""Scoring a model on task items: continuation log-likelihoods in length-sorted batches, greedy decoding.

:class:`Scorer` is the one place a module meets evaluation text: the in-loop suites, ``constellation-kit
eval`` and the lm-evaluation-harness adapter all go through it, so they agree by construction.

Tokenisation follows the harness's causal models (``lm_eval.api.model.TemplateLM._encode_pair``):
trailing spaces of the context move to the continuation, the pair is encoded whole and split after
the context's own tokens, and an empty context becomes the end-of-text token. A media item's
encoder placeholders come before the context.

Every public method runs a number of forward calls that depends only on the number of requests and
the batch size, never on the data: under FSDP2 every rank must run the same number of forwards
(each one all-gathers parameters), and :class:`~constellation_kit.eval.ValidationSuites` gives each
rank the same number of requests.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from constellation_kit.data import ManifestItem, MediaError
from constellation_kit.errors import ConfigError
from constellation_kit.eval.generation import cut_at_stop
from constellation_kit.eval.task import GenerationItem, MediaRef, MultipleChoiceItem

END_OF_TEXT = "<|endoftext|>"
PLACEHOLDER_TOKENS = {"image": "<|image|>", "audio": "<|audio|>"}


@dataclass(frozen=True)
class Request:
    """One continuation to score: token ids of the context and of the continuation, and optional media."""

    context: list[int]
    continuation: list[int]
    media: MediaRef | None = None


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` as lm-eval's ``TemplateLM._encode_pair`` makes them (context non-empty)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False).ids
    context_ids = tokenizer.encode(context, add_special_tokens=False).ids
    return context_ids, whole[len(context_ids):]


class Scorer:
    """Log-likelihoods and greedy continuations from a (Multimodal)LanguageModel in eval mode.

    Args:
        module: the LightningModule; called as ``module(tokens (B, T), edit_embeddings=...) -> (B, T, V)``.
        tokenizer: the run's tokenizer (must hold ``<|endoftext|>``).
        datamodule: the run's data module, for items with media (its image/audio preprocessing and
            placeholder counts); ``None`` for text only.
        batch_size: rows per forward call.
        max_length: the longest row fed to the model; longer text requests keep their last
            ``max_length`` tokens (the harness's left truncation). ``None``: no limit.
    """

    def __init__(self, module: Any, tokenizer: Tokenizer, datamodule: Any = None, batch_size: int = 16,
                 max_length: int | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1")
        self.module, self.tokenizer, self.datamodule = module, tokenizer, datamodule
        self.batch_size, self.max_length = batch_size, max_length
        eos = tokenizer.token_to_id(END_OF_TEXT)
        if eos is None:
            raise ConfigError(f"the tokenizer has no {END_OF_TEXT!r} token, which scoring uses as the empty context")
        self.eos_id = eos
        self._loaders: dict[str, Callable] | None = None

    # -- requests ------------------------------------------------------------------------------

    def encode(self, context: str, continuation: str, media: MediaRef | None = None) -> Request:
        """The request scoring ``continuation`` after ``context`` (and ``media``'s placeholders before it)."""
        if context:
            context_ids, continuation_ids = encode_pair(self.tokenizer, context, continuation)
        else:
            continuation_ids = self.tokenizer.encode(continuation, add_special_tokens=False).ids
            context_ids = []
            if media is None:  # the harness: end-of-text as context, unless the continuation starts with it
                if continuation_ids[:1] == [self.eos_id]:
                    context_ids, continuation_ids = continuation_ids[:1], continuation_ids[1:]
                else:
                    context_ids = [self.eos_id]
        if media is not None:
            context_ids = self.placeholders(media.modality) + context_ids
        return Request(context_ids, continuation_ids, media)

    def placeholders(self, modality: str) -> list[int]:
        """The placeholder ids one ``modality`` item takes in a row."""
        counts = getattr(self.datamodule, "num_placeholders", None)
        token = self.tokenizer.token_to_id(PLACEHOLDER_TOKENS.get(modality, ""))
        encoders = getattr(self.module, "encoders", None) or {}
        if not isinstance(counts, dict) or modality not in counts or token is None or modality not in encoders:
            raise ConfigError(f"this run cannot read {modality}: its model has no {modality} encoder (or its data no "
                              f"{modality} placeholders); drop the task's {modality} items or evaluate a multimodal run")
        return [token] * counts[modality]

    def multiple_choice_requests(self, item: MultipleChoiceItem) -> list[Request]:
        return [self.encode(item.context, item.delimiter + choice, item.media) for choice in item.choices]

    # -- log-likelihoods -----------------------------------------------------------------------

    @torch.no_grad()
    def loglikelihoods(self, requests: Sequence[Request], progress: bool = False) -> list[tuple[float, bool]]:
        """For each request, ``(summed log-likelihood of the continuation, whether it is the greedy one)``.

        Requests run longest first (the harness's order: the first batch shows whether memory
        suffices; similar lengths pad little), ``batch_size`` per forward, results in input order.
        """
        rows = [self._row(r) for r in requests]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="scoring", disable=not progress, unit="batch"):
            logits = self._forward([rows[i][0] for i in batch], [requests[i].media for i in batch])  # (B, T, V)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            for b, i in enumerate(batch):
                tokens, n = rows[i]
                start = len(tokens) - n  # the row's last n positions predict the continuation's n tokens
                targets = torch.tensor(requests[i].continuation[-n:], device=logits.device)
                scores = log_probs[b, start:start + n]  # (n, V)
                picked = scores.gather(-1, targets[:, None]).squeeze(-1)
                results[i] = (float(picked.sum()), bool((scores.argmax(-1) == targets).all()))
        return results

    def _row(self, request: Request) -> tuple[list[int], int]:
        """The input row (context + continuation, minus the last token) and the continuation's length in it."""
        if not request.continuation:
            raise ConfigError("a continuation to score is empty: every choice needs some text")
        whole = request.context + request.continuation
        if self.max_length is not None and len(whole) - 1 > self.max_length:
            if request.media is not None:
                raise ConfigError(f"an item with {request.media.modality} is {len(whole)} tokens, over max_length="
                                  f"{self.max_length}: its placeholders cannot be cut; shorten its context")
            whole = whole[-(self.max_length + 1):]
        return whole[:-1], min(len(request.continuation), len(whole) - 1)

    def _forward(self, rows: list[list[int]], media: list[MediaRef | None]) -> torch.Tensor:
        """Logits (B, T, V) of right-padded ``rows`` (causal: padding never reaches the real positions)."""
        device = self.module.device
        width = max(len(r) for r in rows)
        tokens = torch.full((len(rows), width), self.eos_id, dtype=torch.long)
        for b, row in enumerate(rows):
            tokens[b, :len(row)] = torch.tensor(row)
        tokens = tokens.to(device)
        batch = self._media_batch(tokens, rows, media)
        editor = self.module.embedding_editor(batch) if batch else None
        return self.module(tokens, edit_embeddings=editor)

    def _media_batch(self, tokens: torch.Tensor, rows: list[list[int]], media: list[MediaRef | None]) -> dict:
        """The multimodal fields the module's ``write_media`` reads, or ``{}`` for a text-only module.

        Every modality the module encodes is present, empty (0, ...) when no row has one: under
        FSDP2 the module then runs that encoder on a blank, so every rank joins its collectives.
        """
        encoders = getattr(self.module, "encoders", None)
        if not encoders:
            if any(m is not None for m in media):
                raise ConfigError("an item has media but this model has no encoders")
            return {}
        if getattr(self.datamodule, "_blanks", None) is None and all(m is None for m in media):
            return {}  # text through a multimodal model, no data module: fine off FSDP2 (which always has one)
        blanks = self._blanks()
        batch: dict[str, Any] = {"tokens": tokens}
        for modality in encoders:
            items = [self._load(m) for m in media if m is not None and m.modality == modality]
            blank = blanks[modality]
            stacked = torch.stack(items) if items else blank.new_zeros((0, *blank.shape))
            mask = torch.zeros_like(tokens, dtype=torch.bool)
            placeholder = self.tokenizer.token_to_id(PLACEHOLDER_TOKENS[modality])
            for b, (row, ref) in enumerate(zip(rows, media)):
                if ref is not None and ref.modality == modality:
                    mask[b, :len(row)] = tokens[b, :len(row)] == placeholder
            batch[modality], batch[f"{modality}_mask"] = stacked.to(tokens.device), mask
            # No caption tokens to pair with the media: the training-only alignment loss reads this.
            batch[f"{modality}_caption"] = torch.full_like(tokens, -1)
        return batch

    def _blanks(self) -> dict[str, torch.Tensor]:
        # The data module's own blank items: their shapes are the encoders' input shapes.
        blanks = getattr(self.datamodule, "_blanks", None)
        if blanks is None:
            raise ConfigError("scoring a multimodal model needs its data module (image size, audio length)")
        return blanks()

    def _load(self, media: MediaRef) -> torch.Tensor:
        """The encoder input of one file, preprocessed exactly as the run's held-out media are."""
        if self._loaders is None:
            loaders = getattr(self.datamodule, "_loaders", None)
            if loaders is None:
                raise ConfigError(f"cannot load {media.path}: the run's data module reads no media")
            self._loaders = loaders(False)  # evaluation transforms: no augmentation
        try:
            return self._loaders[media.modality](ManifestItem(media.modality, "", media.path))
        except MediaError as error:
            raise ConfigError(f"cannot read the {media.modality} of an evaluation item: {error}") from error

    # -- greedy decoding -----------------------------------------------------------------------

    @torch.no_grad()
    def greedy(self, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        """``max_new_tokens`` greedy tokens after each prompt, without a cache.

        Always exactly ``max_new_tokens`` forwards per batch (no early stop): the same count on every
        rank, which FSDP2 needs. Text only.
        """
        out: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            rows = [list(prompts[i]) for i in batch]
            for _ in range(max_new_tokens):
                inputs = [r[-self.max_length:] if self.max_length else r for r in rows]
                logits = self._forward(inputs, [None] * len(inputs))
                for b, row in enumerate(inputs):
                    rows[b].append(int(logits[b, len(row) - 1].argmax()))
            for b, i in enumerate(batch):
                out[i] = rows[b][len(prompts[i]):]
        return out


# -- item scores ---------------------------------------------------------------------------------


def multiple_choice_scores(item: MultipleChoiceItem, loglikelihoods: Sequence[float]) -> dict[str, float]:
    """``acc`` and ``acc_norm`` (0 or 1) of one item from its choices' summed log-likelihoods.

    ``acc_norm`` divides by each choice's length in characters, exactly ``lm_eval``'s
    ``np.argmax(lls / completion_len)``; ties go to the first choice, as ``np.argmax``'s do.
    """
    lls = torch.tensor(list(loglikelihoods), dtype=torch.float64)
    lengths = torch.tensor([float(len(c)) for c in item.choices], dtype=torch.float64)
    return {"acc": float(int(lls.argmax()) == item.answer), "acc_norm": float(int((lls / lengths).argmax()) == item.answer)}


def exact_match(item: GenerationItem, generated: str) -> float:
    """1.0 when the generation before its first stop string, stripped, equals the stripped answer."""
    return float(cut_at_stop(generated, item.stop).strip() == item.answer.strip())
