"""Text generation from a trained model: a token-level loop with a KV cache, and a text-level API on top.

:func:`generate` extends token-id prompts: the prompt runs through the network once (the
"prefill", through the layers' own attention kernels), then each step feeds only the token just
chosen, every attention layer reading the keys and values it cached
(:class:`~constellation_kit.model.kv_cache.KVCache`; a local layer keeps only its window). Without
the cache (``use_cache=False``) each step re-runs the whole prefix: the reference the cached path is
tested against, and the slow side of ``benchmarks/eval.py``.

:func:`generate_text` is what commands and evaluators call: strings (and optional image/audio
files) in, continuations out, cut before the first stop string.

Prompts of different lengths share a batch left-padded: every row's newest token sits in the last
column, so one step appends one column for all. Padding is masked out of attention and of RoPE's
positions, so each row generates what it would alone. A row ends at ``<|endoftext|>`` (the
separator every training document ends with), at a stop string, or after ``max_new_tokens``.
"""

from collections.abc import Callable, Sequence

import torch
from lightning.pytorch import LightningModule

from constellation_kit.data.tokenizer import END_OF_TEXT
from constellation_kit.errors import ConfigError
from constellation_kit.eval.media_inputs import MODALITIES, MediaInputs, media_batch
from constellation_kit.eval.sampling import Sampling, next_tokens
from constellation_kit.model.kv_cache import KVCache
from constellation_kit.model.layout import SequenceLayout
from constellation_kit.trained_model import TrainedModel

BATCH_SIZE = 16
"""Prompts generated together by :func:`generate_text`; sorted by length first, so padding stays short."""


@torch.no_grad()
def generate(
    module: LightningModule,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    eos_id: int | None = None,
    media: list[dict[str, torch.Tensor]] | None = None,
    placeholder_ids: dict[str, int] | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    stop: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """The token ids each prompt is continued with (``eos_id`` itself left out).

    Args:
        module: a :class:`~constellation_kit.train.LanguageModel` (its ``network`` and, for media,
            its ``embedding_editor``), in eval mode.
        prompts: token ids per row, each non-empty.
        max_new_tokens: at most this many new tokens per row.
        sampling: greedy (the default) or temperature / top-k / top-p sampling.
        eos_id: a row ends when it draws this token.
        media: per row, its encoder inputs by modality (see :mod:`constellation_kit.eval.media_inputs`);
            the prompt's placeholder tokens must already be in ``prompts``.
        placeholder_ids: the placeholder token id of each modality in ``media``.
        use_cache: attend a KV cache (one token of work per step) or re-run the whole prefix.
        generator: the random source of sampling (``None``: torch's global one).
        stop: called with a row's new ids after each token; ``True`` ends the row.
    """
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be 0 or more")
    if any(len(p) == 0 for p in prompts):
        raise ConfigError("a prompt is empty: generation continues text, so give at least one token (or an image/audio)")
    outputs: list[list[int]] = [[] for _ in prompts]
    if not prompts or max_new_tokens == 0:
        return outputs
    network = module.network
    device = network.head_weight.device
    width = max(len(p) for p in prompts)
    pad_id = eos_id if eos_id is not None else 0
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = torch.tensor(prompt)
        valid[row, width - len(prompt) :] = True
    tokens, valid = tokens.to(device), valid.to(device)
    batch = None
    if media and any(media):
        batch = media_batch(tokens, valid, media, placeholder_ids or {})

    if use_cache:
        cache = KVCache()
        step = _Cached(network, module, cache, tokens, valid, batch)
    else:
        step = _Uncached(network, module, tokens, valid, batch)
    logits = step.prefill()
    done = [False] * len(prompts)
    for index in range(max_new_tokens):
        chosen = next_tokens(logits, sampling, generator)  # (B,)
        for row, token in enumerate(chosen.tolist()):
            if done[row]:
                continue
            if token == eos_id:
                done[row] = True
                continue
            outputs[row].append(token)
            done[row] = stop is not None and stop(outputs[row])
        if all(done) or index == max_new_tokens - 1:
            break
        logits = step.next(chosen[:, None])
    return outputs


class _Cached:
    """The prompt once, then one token per step against the KV cache; returns last-position logits (B, V)."""

    def __init__(self, network, module, cache: KVCache, tokens, valid, batch) -> None:
        self.network, self.module, self.cache = network, module, cache
        self.tokens, self.valid, self.batch = tokens, valid, batch

    def prefill(self) -> torch.Tensor:
        editor = None if self.batch is None else self.module.embedding_editor(self.batch)
        layout = self.cache.extend(self.valid)
        hidden = self.network(self.tokens, layout, edit_embeddings=editor, cache=self.cache).hidden
        return self.network.logits(hidden[:, -1])

    def next(self, chosen: torch.Tensor) -> torch.Tensor:
        hidden = self.network(chosen, cache=self.cache).hidden  # (B, 1, d_model)
        return self.network.logits(hidden[:, -1])


class _Uncached:
    """Every step re-runs the network over prompt and continuation: the reference for :class:`_Cached`."""

    def __init__(self, network, module, tokens, valid, batch) -> None:
        self.network, self.module = network, module
        self.tokens, self.valid, self.batch = tokens, valid, batch

    def prefill(self) -> torch.Tensor:
        return self._forward()

    def next(self, chosen: torch.Tensor) -> torch.Tensor:
        self.tokens = torch.cat([self.tokens, chosen], dim=1)
        self.valid = torch.cat([self.valid, torch.ones_like(chosen, dtype=torch.bool)], dim=1)
        return self._forward()

    def _forward(self) -> torch.Tensor:
        editor = None
        if self.batch is not None:
            # Media fill the prompt's placeholders only: generated columns are never masks.
            extra = self.tokens.shape[1] - self.batch["tokens"].shape[1]
            batch = {k: _pad_columns(v, extra) if k.endswith(("_mask", "_caption")) else v for k, v in self.batch.items()}
            editor = self.module.embedding_editor({**batch, "tokens": self.tokens})
        # Padding is its own document (id 0), so it is never attended and positions restart after it.
        layout = SequenceLayout.from_document_ids(self.valid.long())
        hidden = self.network(self.tokens, layout, edit_embeddings=editor).hidden
        return self.network.logits(hidden[:, -1])


def _pad_columns(mask: torch.Tensor, extra: int) -> torch.Tensor:
    fill = False if mask.dtype == torch.bool else -1
    return torch.cat([mask, mask.new_full((mask.shape[0], extra), fill)], dim=1)


def generate_text(
    trained: TrainedModel,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: list[str] | None = None,
    images: list[str | None] | None = None,
    audio: list[str | None] | None = None,
    seed: int | None = None,
) -> list[str]:
    """The continuation of each prompt, cut before the first stop string (which is not included; empty ones are ignored).

    ``images``/``audio`` give each prompt's file (or ``None``), as long as ``prompts``: its
    placeholder tokens come first, then the prompt's text (as in training, where a caption follows
    its item). An empty prompt starts from ``<|endoftext|>``, like a new document. ``seed`` makes
    sampling reproducible; greedy decoding (``temperature`` 0) needs none.
    Raises :class:`ConfigError` for bad settings, an unusable file, or media the model cannot see.
    """
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    # An empty stop string would match everywhere; it also is what decoding <|endoftext|> gives with special
    # tokens skipped, which callers pass meaning "stop at the end of text", as generation does anyway.
    stops = [s for s in (stop or []) if s]
    per_prompt = {"image": images, "audio": audio}
    for modality, files in per_prompt.items():
        if files is not None and len(files) != len(prompts):
            raise ConfigError(f"{len(files)} {modality} entries for {len(prompts)} prompts: give one per prompt (None for none)")
    tokenizer = trained.tokenizer
    eos_id = tokenizer.token_to_id(END_OF_TEXT)
    inputs = MediaInputs(trained.module, trained.datamodule, tokenizer)
    encoded: list[list[int]] = []
    items: list[dict[str, torch.Tensor]] = []
    for index, text in enumerate(prompts):
        ids: list[int] = []
        item: dict[str, torch.Tensor] = {}
        for modality in MODALITIES:
            path = per_prompt[modality][index] if per_prompt[modality] is not None else None
            if path is not None:
                ids += inputs.placeholders(modality)
                item[modality] = inputs.load(modality, path)
        ids += tokenizer.encode(text, add_special_tokens=False).ids
        # Nothing to continue: start a new document, as every training document follows <|endoftext|>.
        if not ids and eos_id is not None:
            ids = [eos_id]
        encoded.append(ids)
        items.append(item)
    placeholder_ids = {m: inputs.placeholder_id(m) for m in inputs.modalities}
    device = trained.module.network.head_weight.device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    # A stop string of L characters is at most 4L bytes, and every token is at least one byte: the
    # last 4L + 1 tokens hold any stop string the newest token completed.
    tail = 4 * max((len(s) for s in stops), default=0) + 1

    def stopped(ids: list[int]) -> bool:
        text = tokenizer.decode(ids[-tail:])
        return any(s in text for s in stops)

    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[str] = [""] * len(prompts)
    for start in range(0, len(order), BATCH_SIZE):
        chunk = order[start : start + BATCH_SIZE]
        continuations = generate(
            trained.module, [encoded[i] for i in chunk], max_new_tokens=max_new_tokens, sampling=sampling,
            eos_id=eos_id, media=[items[i] for i in chunk],
            placeholder_ids=placeholder_ids, generator=generator, stop=stopped if stops else None,
        )
        for index, ids in zip(chunk, continuations, strict=True):
            results[index] = cut_at_stop(tokenizer.decode(ids), stops)
    return results


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any of ``stops`` (empty stops never match)."""
    cuts = [at for at in (text.find(s) for s in stops if s) if at >= 0]
    return text[: min(cuts)] if cuts else text
