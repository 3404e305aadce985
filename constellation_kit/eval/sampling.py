"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling.

The filters follow the common convention (Hugging Face ``generate``'s logits warpers, applied in
the same order): divide by the temperature, keep the top-k logits, then keep the top-p nucleus of
what is left, renormalise, draw. Temperature 0 means greedy (argmax; the filters cannot change it).

- **top-k** (Fan et al. 2018, https://arxiv.org/abs/1805.04833): keep every token whose logit is at
  least the k-th largest; tokens tied with the k-th are all kept, so the choice never depends on
  how a sort breaks ties.
- **top-p** (Holtzman et al. 2019, https://arxiv.org/abs/1904.09751): keep the smallest set of most
  likely tokens whose probabilities sum to at least p: a token is kept when the tokens more likely
  than it sum to less than p. The most likely token is always kept.
"""

from dataclasses import dataclass

import torch

from constellation_kit.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn: ``temperature`` 0 is greedy; ``top_k``/``top_p`` ``None`` disable the filters."""

    temperature: float = 0.0
    """Logits are divided by it before sampling; 0 picks the most likely token."""
    top_k: int | None = None
    """Keep only the k most likely tokens (ties with the k-th kept)."""
    top_p: float | None = None
    """Keep only the most likely tokens whose probabilities sum to at least p, in (0, 1]."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be 0 (greedy) or positive (e.g. 0.8)")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k={self.top_k} must be at least 1, or unset to keep every token")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1], e.g. 0.9, or unset to keep every token")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``logits`` (B, V) with every token below the k-th largest logit of its row set to -inf."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """``logits`` (B, V) with every token outside the top-p nucleus of its row set to -inf."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V): probability of the tokens ranked above each
    remove_sorted = mass_before >= p
    remove_sorted[..., 0] = False  # the most likely token always stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def next_tokens(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each row (B,) from its last-position logits (B, V), drawn as ``sampling`` says."""
    logits = logits.float()
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k is not None:
        logits = top_k_filter(logits, sampling.top_k)
    if sampling.top_p is not None and sampling.top_p < 1:
        logits = top_p_filter(logits, sampling.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
