"""The grounding check: multiple-choice captioning of held-out media items, batched for scoring."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from constellation_kit.data.packing import IGNORE_INDEX

if TYPE_CHECKING:  # the bank's module imports this one's names back for compatibility
    from constellation_kit.data.multimodal_dataset import MediaBank


@dataclass(frozen=True)
class Choice:
    """One grounding question: the media ``item`` and candidate captions (token ids); ``answer`` indexes the true one."""

    item: int
    candidates: list[list[int]]
    answer: int


class GroundingDataset(Dataset):
    """Multiple-choice captioning: item i yields its media once and K rows, one per candidate caption.

    Row k is ``placeholders + candidate_k + <|endoftext|>``, with targets only on the candidate, so the
    model's summed log-likelihood of each candidate can be compared (see the LightningModule).
    """

    def __init__(self, choices: list[Choice], bank: "MediaBank", placeholder_id: int, num_placeholders: int, eos_id: int) -> None:
        self.choices, self.bank = choices, bank
        self.placeholder_id, self.num_placeholders, self.eos_id = placeholder_id, num_placeholders, eos_id

    def __len__(self) -> int:
        return len(self.choices)

    def __getitem__(self, index: int) -> dict:
        choice = self.choices[index]
        tensor, _ = self.bank.load(choice.item)
        rows = [[self.placeholder_id] * self.num_placeholders + c + [self.eos_id] for c in choice.candidates]
        return {"rows": rows, "media": tensor, "answer": choice.answer, "modality": self.bank.items[choice.item].modality}


def collate_grounding(
    examples: list[dict], pad_id: int, placeholder_ids: dict[str, int], blanks: dict[str, torch.Tensor]
) -> dict:
    """Batch grounding items: (N*K, T) rows padded to the longest, the media repeated K times."""
    modality = examples[0]["modality"]
    num_choices = len(examples[0]["rows"])
    rows = [row for e in examples for row in e["rows"]]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    lengths = torch.tensor([len(r) for r in rows])
    positions = torch.arange(width)
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, :-1] = tokens[:, 1:]
    # Only the candidate caption and its end-of-text are scored: not placeholders, not padding.
    scored = (positions[None, :-1] + 1 < lengths[:, None]) & (tokens[:, 1:] != placeholder_ids[modality])
    targets[:, :-1][~scored] = IGNORE_INDEX
    targets[:, -1] = IGNORE_INDEX
    media = torch.stack([e["media"] for e in examples])  # once per item: the model repeats its embeddings K times
    batch = {
        "tokens": tokens,
        "targets": targets,
        "document_ids": torch.zeros_like(tokens),
        "answer": torch.tensor([e["answer"] for e in examples]),
        "num_choices": num_choices,
        "modality": modality,
    }
    for other, token_id in placeholder_ids.items():
        batch[f"{other}_mask"] = tokens == token_id
        batch[f"{other}_caption"] = torch.full_like(tokens, -1)
        batch[other] = media if other == modality else blanks[other].new_zeros((0, *blanks[other].shape))
    return batch
