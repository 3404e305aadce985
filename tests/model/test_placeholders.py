"""Projected media embeddings land exactly on the placeholder positions, in order; counts must match."""

import pytest
import torch

from constellation_kit.errors import ConfigError
from constellation_kit.model import write_at_placeholders


def test_items_fill_placeholder_runs_in_row_major_order() -> None:
    embeddings = torch.zeros(2, 6, 3)
    mask = torch.tensor([[0, 1, 1, 0, 0, 0], [1, 1, 0, 0, 1, 1]], dtype=torch.bool)  # 3 items of 2 tokens
    media = torch.arange(1, 19, dtype=torch.float32).view(3, 2, 3)
    out = write_at_placeholders(embeddings, mask, media, "image")
    # The slow way: walk the positions in order, taking the next media token each time.
    expected = embeddings.clone()
    flat = iter(media.view(-1, 3))
    for b in range(2):
        for t in range(6):
            if mask[b, t]:
                expected[b, t] = next(flat)
    torch.testing.assert_close(out, expected)
    assert embeddings.abs().sum() == 0  # out of place


def test_gradient_reaches_media_and_other_tokens() -> None:
    embeddings = torch.randn(1, 4, 2, requires_grad=True)
    media = torch.randn(1, 2, 2, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    write_at_placeholders(embeddings, mask, media, "audio").sum().backward()
    assert (media.grad == 1).all()
    assert embeddings.grad[0, :, 0].tolist() == [1, 0, 0, 1]


def test_count_mismatch_names_both_numbers() -> None:
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :5] = True
    with pytest.raises(ConfigError) as error:
        write_at_placeholders(torch.zeros(2, 8, 4), mask, torch.zeros(2, 3, 4), "image")
    message = str(error.value)
    assert "5 image placeholder tokens" in message and "produced 6 embeddings (2 items x 3 tokens)" in message
