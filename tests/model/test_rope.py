import torch

from constellation_kit.model import RotaryEmbedding, SequenceLayout


def test_rotation_preserves_norm() -> None:
    rope = RotaryEmbedding(16)
    x = torch.randn(2, 3, 10, 16)
    cos, sin = rope(torch.arange(10).expand(2, 10))
    torch.testing.assert_close(RotaryEmbedding.rotate(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_scores_depend_only_on_relative_position() -> None:
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> torch.Tensor:
        cq, sq = rope(torch.tensor([[i]]))
        ck, sk = rope(torch.tensor([[j]]))
        return (RotaryEmbedding.rotate(q, cq, sq) * RotaryEmbedding.rotate(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100))
    assert not torch.allclose(score(7, 3), score(7, 4))


def test_inverse_frequencies_follow_the_formula() -> None:
    rope = RotaryEmbedding(8, base=100.0)
    torch.testing.assert_close(rope.inv_freq, torch.tensor([100.0 ** (-2 * i / 8) for i in range(4)]))


def test_positions_restart_at_each_document() -> None:
    layout = SequenceLayout.from_document_ids(torch.tensor([[3, 3, 3, 4, 4, 9]]))
    assert layout.positions.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert not layout.is_single_document
