import pytest
import torch
import torch.nn.functional as F

from constellation_kit.model.chunked_loss import chunked_linear_cross_entropy


def plain(hidden, weight, targets, vocab):
    return F.cross_entropy(F.linear(hidden, weight)[..., :vocab].float().flatten(0, -2), targets.flatten())


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_equals_the_plain_path_in_value_and_gradients(chunk_size: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 20, 16, requires_grad=True)
    weight = torch.randn(64, 16, requires_grad=True)  # 50 real tokens padded to 64 rows
    targets = torch.randint(0, 50, (3, 20))
    targets[0, :5] = -100  # ignored positions, e.g. across a document boundary
    expected = plain(hidden, weight, targets, 50)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    loss = chunked_linear_cross_entropy(hidden, weight, targets, vocab_size=50, chunk_size=chunk_size)
    grads = torch.autograd.grad(loss, (hidden, weight))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert grads[1][50:].abs().sum() == 0  # padding rows are never targets


def test_scales_with_the_upstream_gradient_and_runs_without_grad() -> None:
    torch.manual_seed(1)
    hidden, weight = torch.randn(10, 8, requires_grad=True), torch.randn(12, 8, requires_grad=True)
    targets = torch.randint(0, 12, (10,))
    (3.0 * chunked_linear_cross_entropy(hidden, weight, targets, chunk_size=4)).backward()
    reference_h, reference_w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    (3.0 * plain(reference_h, reference_w, targets, 12)).backward()
    torch.testing.assert_close(hidden.grad, reference_h.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(chunked_linear_cross_entropy(hidden, weight, targets, chunk_size=3),
                                   plain(hidden, weight, targets, 12), rtol=1e-5, atol=1e-6)
