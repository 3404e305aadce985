"""The per-document attention operator compiled blocks call equals the eager reference, forward and backward."""

import torch

from constellation_kit.model import SequenceLayout
from constellation_kit.model.attention_backends.document_op import document_attention
from constellation_kit.model.attention_backends.eager import EagerBackend


def test_document_attention_matches_the_eager_reference_in_output_and_gradients() -> None:
    torch.manual_seed(0)
    # Grouped-query heads (4 query heads over 2 kv heads); rows with different document lengths,
    # two documents of length 200 in different rows (stacked into one call), one of length 100.
    q = torch.randn(2, 4, 600, 8, requires_grad=True)
    k = torch.randn(2, 2, 600, 8, requires_grad=True)
    v = torch.randn(2, 2, 600, 8, requires_grad=True)
    lengths = ((300, 200, 100), (200, 100, 300))
    document_ids = torch.stack([torch.repeat_interleave(torch.arange(3), torch.tensor(row)) for row in lengths])
    grad = torch.randn(2, 4, 600, 8)

    out, _ = document_attention(q, k, v, document_ids)
    out.backward(grad)
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    expected = EagerBackend()(q, k, v, SequenceLayout.from_document_ids(document_ids), None, 0.0)
    expected.backward(grad)

    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for a, t in zip(got, (q, k, v)):
        torch.testing.assert_close(a, t.grad, rtol=1e-5, atol=1e-5)
    # The fake kernels promise the shapes and strides the real kernels deliver.
    torch.library.opcheck(torch.ops.constellation.document_attention, (q, k, v, document_ids))
