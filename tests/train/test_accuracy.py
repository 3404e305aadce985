import torch

from constellation_kit.train import LanguageModel


class FixedLogits(torch.nn.Module):
    """A stand-in network whose logits predict token id (input + 1) mod V at every position."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, tokens, layout=None, embeddings=None, edit_embeddings=None):
        return type("Out", (), {"hidden": tokens, "aux": []})()

    def logits(self, hidden):
        return torch.nn.functional.one_hot((hidden + 1) % self.vocab_size, self.vocab_size).float()


def test_val_accuracy_counts_only_scored_targets() -> None:
    model = LanguageModel(FixedLogits, vocab_size=8)
    model.configure_model()
    logged = {}
    model.log = lambda name, value, **kwargs: logged.update({name: (float(value), kwargs.get("batch_size"))})
    tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    targets = torch.tensor([[2, -100, 0, -100], [6, 7, -100, -100]])  # scored: right, wrong, right, right
    model.validation_step({"tokens": tokens, "targets": targets, "document_ids": torch.zeros_like(tokens)}, 0)
    assert logged["val/accuracy"] == (0.75, 4)
