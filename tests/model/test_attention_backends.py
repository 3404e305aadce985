"""Every attention backend against a slow reference written here: loops over queries, explicit rules."""

import math

import pytest
import torch

from constellation_kit.errors import ConfigError
from constellation_kit.model import GroupedQueryAttention, SequenceLayout
from constellation_kit.model.attention_backends import BACKENDS, select_backend
from constellation_kit.model.attention_backends.sdpa import SDPABackend

# SDPA twice: its linear-memory paths (document grouping, window blocks) and its short-sequence dense-mask path.
CPU = {"sdpa": SDPABackend(dense_below=0), "sdpa_dense": SDPABackend(dense_below=10**9), "eager": BACKENDS["eager"]}
CPU_BACKENDS = list(CPU)
DOCUMENTS = torch.tensor([[0] * 5 + [1] * 11 + [2] * 7, [4] * 23, [1] * 9 + [2] * 9 + [3] * 5])  # (3, 23)


def reference(q, k, v, document_ids, window):
    """Query i of row b reads key j iff j <= i, same document, i - j < window; head h reads KV head h // group.

    In float64, so that its own rounding is far below the tolerance the backends are held to.
    """
    q, k, v = q.double(), k.double(), v.double()
    batch, n_heads, seq_len, head_dim = q.shape
    group = n_heads // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(batch):
        for i in range(seq_len):
            keys = [
                j for j in range(i + 1)
                if document_ids[b, j] == document_ids[b, i] and (window is None or i - j < window)
            ]
            for h in range(n_heads):
                kv = h // group
                scores = torch.stack([q[b, h, i] @ k[b, kv, j] for j in keys]) / math.sqrt(head_dim)
                weights = scores.softmax(0)
                out[b, h, i] = sum(w * v[b, kv, j] for w, j in zip(weights, keys))
    return out.float()


def inputs(n_heads: int, n_kv_heads: int, batch: int = 3, seq_len: int = 23, head_dim: int = 8):
    torch.manual_seed(0)
    q = torch.randn(batch, n_heads, seq_len, head_dim, requires_grad=True)
    k = torch.randn(batch, n_kv_heads, seq_len, head_dim, requires_grad=True)
    v = torch.randn(batch, n_kv_heads, seq_len, head_dim, requires_grad=True)
    return q, k, v


def grads(out, q, k, v, weight):
    return torch.autograd.grad((out * weight).sum(), (q, k, v))


@pytest.fixture(scope="module")
def references():
    """Reference outputs and gradients, computed once per (grouping, window, packing)."""
    cache = {}

    def get(n_kv_heads, window, packed):
        key = (n_kv_heads, window, packed)
        if key not in cache:
            q, k, v = inputs(4, n_kv_heads)
            documents = DOCUMENTS if packed else torch.zeros(3, 23, dtype=torch.long)
            out = reference(q, k, v, documents, window)
            weight = torch.randn_like(out)
            cache[key] = (documents, out.detach(), grads(out, q, k, v, weight), weight)
        return cache[key]

    return get


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])  # MQA, GQA, MHA
@pytest.mark.parametrize("window", [None, 1, 4, 7])
@pytest.mark.parametrize("packed", [True, False])
def test_backend_equals_reference(backend, n_kv_heads, window, packed, references) -> None:
    documents, expected, expected_grads, weight = references(n_kv_heads, window, packed)
    q, k, v = inputs(4, n_kv_heads)
    out = CPU[backend](q, k, v, SequenceLayout.from_document_ids(documents), window, 0.0)
    assert_relative_close(out, expected)
    for got, want in zip(grads(out, q, k, v, weight), expected_grads):
        assert_relative_close(got, want)


def assert_relative_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within 1e-5 relative, elementwise or to the tensor's scale (at least 1: with a window of one token the
    key gradient is exactly 0 in theory, and float32 rounding leaves ~1e-6 there)."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(want.abs().max().item(), 1.0))


@pytest.fixture(params=["sdpa", "sdpa_dense", "eager"])
def module_backend(request, monkeypatch) -> str:
    """A backend name for GroupedQueryAttention; "sdpa" patched to take its linear-memory paths even at T = 23."""
    if request.param == "eager":
        return "eager"
    monkeypatch.setitem(BACKENDS, "sdpa", CPU[request.param])
    return "sdpa"


@pytest.mark.parametrize("kind", ["G", "L"])
def test_packed_sequence_equals_each_document_alone(kind: str, module_backend: str) -> None:
    torch.manual_seed(0)
    attn = GroupedQueryAttention(32, n_heads=4, n_kv_heads=2, layer_pattern=kind, window=3, backend=module_backend)
    lengths = [5, 7, 5, 1]
    docs = [torch.randn(1, n, 32) for n in lengths]
    ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]
    packed = attn(torch.cat(docs, dim=1), SequenceLayout.from_document_ids(ids))
    alone = torch.cat([attn(d, SequenceLayout.single_document(1, d.shape[1], d.device)) for d in docs], dim=1)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["G", "L"])
def test_changing_one_document_leaves_the_others_unchanged(kind: str, module_backend: str) -> None:
    torch.manual_seed(0)
    attn = GroupedQueryAttention(32, n_heads=4, n_kv_heads=1, layer_pattern=kind, window=4, backend=module_backend, qk_norm=True)
    layout = SequenceLayout.from_document_ids(DOCUMENTS)
    x = torch.randn(3, 23, 32)
    changed = x.clone()
    changed[0, 7] += 3.0  # a token inside document 1 of row 0 (positions 5..15)
    before, after = attn(x, layout), attn(changed, layout)
    in_doc = torch.zeros(3, 23, dtype=torch.bool)
    in_doc[0, 7:16] = True
    torch.testing.assert_close(after[~in_doc], before[~in_doc], rtol=0, atol=0)
    assert not torch.allclose(after[0, 7], before[0, 7])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_window_edges_are_exact(backend: str) -> None:
    window, seq_len = 5, 20
    q, k, v = inputs(2, 2, batch=1, seq_len=seq_len)
    layout = SequenceLayout.single_document(1, seq_len, q.device)
    base = CPU[backend](q, k, v, layout, window, 0.0)
    for i in (window, 11, seq_len - 1):
        outside, inside = v.detach().clone(), v.detach().clone()
        outside[:, :, i - window] += 10.0  # exactly one step beyond the window
        inside[:, :, i - window + 1] += 10.0  # the oldest key the window holds
        assert torch.equal(CPU[backend](q, k, outside, layout, window, 0.0)[:, :, i], base[:, :, i])
        assert not torch.allclose(CPU[backend](q, k, inside, layout, window, 0.0)[:, :, i], base[:, :, i])


def test_layer_pattern_assigns_kinds_and_windows() -> None:
    kinds = [GroupedQueryAttention(16, i, n_heads=2, layer_pattern="LLLLLG", window=8) for i in range(12)]
    assert [a.kind for a in kinds] == (["local"] * 5 + ["global"]) * 2
    assert {a.window for a in kinds if a.kind == "local"} == {8} and {a.window for a in kinds if a.kind == "global"} == {None}


def test_local_and_global_layers_take_their_own_rope_base() -> None:
    from constellation_kit.model import RopeScaling

    scaling = RopeScaling("linear", factor=2.0)
    local = GroupedQueryAttention(16, 0, n_heads=2, layer_pattern="LG", rope_base=1e6, local_rope_base=1e4, rope_scaling=scaling)
    global_ = GroupedQueryAttention(16, 1, n_heads=2, layer_pattern="LG", rope_base=1e6, local_rope_base=1e4, rope_scaling=scaling)
    assert (local.rope.base, local.rope.scaling.kind) == (1e4, "none")  # Gemma 3: no scaling on local layers
    assert (global_.rope.base, global_.rope.scaling.kind) == (1e6, "linear")


@pytest.mark.parametrize("pattern", ["", "GX", "global"])
def test_bad_layer_pattern_is_a_config_error(pattern: str) -> None:
    with pytest.raises(ConfigError, match="layer_pattern"):
        GroupedQueryAttention(16, n_heads=2, layer_pattern=pattern)


def test_auto_picks_sdpa_on_cpu_and_named_gpu_backends_refuse_cpu() -> None:
    q = torch.randn(1, 2, 4, 8)
    assert select_backend("auto", q, 0.0).name == "sdpa"
    for name in ("flash_attn", "flex"):
        with pytest.raises(ConfigError, match=name):
            select_backend(name, q, 0.0)


def test_meta_construction_then_materialise() -> None:
    from constellation_kit.model import RopeScaling

    with torch.device("meta"):
        attn = GroupedQueryAttention(32, n_heads=4, qk_norm=True, rope_scaling=RopeScaling("yarn", factor=2.0, original_max_position=16))
    attn.to_empty(device="cpu")
    for module in attn.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    x = torch.randn(1, 6, 32)
    assert torch.isfinite(attn(x, SequenceLayout.single_document(1, 6, x.device))).all()
    assert attn.rope.inv_freq[0].item() == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["flash_attn", "flex", "sdpa"])
@pytest.mark.parametrize("window", [None, 64])
def test_gpu_backends_match_eager_in_bf16(backend: str, window) -> None:  # pragma: no cover - no GPU here
    if BACKENDS[backend].unavailable_reason(torch.empty(1, device="cuda", dtype=torch.bfloat16), 0.0):
        pytest.skip(f"{backend} unavailable")
    torch.manual_seed(0)
    q = torch.randn(2, 8, 512, 64, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn(2, 2, 512, 64, device="cuda", dtype=torch.bfloat16), torch.randn(2, 2, 512, 64, device="cuda", dtype=torch.bfloat16)
    documents = torch.repeat_interleave(torch.arange(4, device="cuda"), torch.tensor([100, 200, 150, 62], device="cuda"))
    layout = SequenceLayout.from_document_ids(documents.expand(2, 512))
    expected = BACKENDS["eager"](q.float(), k.float(), v.float(), layout, window, 0.0)
    torch.testing.assert_close(BACKENDS[backend](q, k, v, layout, window, 0.0).float(), expected, rtol=2e-2, atol=2e-2)
