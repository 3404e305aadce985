"""``torch.compile`` per block (the parallelize step's ``compile=True``) computes what the eager network does.

The compiled side is the real code path: a meta-device network through
:func:`~constellation_kit.train.parallelize.parallelize` (compile per block, then FSDP2 on a
one-process gloo mesh) and :func:`~constellation_kit.train.parallelize.materialize`, with fp32
parameters and reduction. The reference is the same network, the same weights, run eagerly. The
model is a small MoE transformer fed packed documents, so the compiled blocks contain the SDPA
per-document path (longer than the backend's ``dense_below``) and the grouped-matmul expert dispatch.

Tolerance: rtol 1e-5, atol 1e-7 on the loss and every gradient (fp32). Measured on CPU (torch
2.11, inductor): the losses are bitwise equal and the largest gradient difference is ~4e-9, from
inductor fusing RMSNorm/SwiGLU reductions in a different order; the routing choices are identical.

Activation checkpointing is on, as in xl.yaml: the checkpointed block compiles as one graph
(dynamo's checkpoint higher-order op), and the test asserts dynamo recorded no graph break at all.

The fast test below covers the rest of the matrix with dynamo and AOT autograd only (``aot_eager``,
no inductor, so seconds): every block kind (dense and MoE, local and global attention), packed and
unpacked, fp32 and bf16, with and without checkpointing, compiles with ``fullgraph=True`` (any
graph break raises) and computes what eager does.
(The MoE aux path under FSDP2 at two processes: ``tests/train/test_fsdp2.py``.)
"""

import os
from functools import partial

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import pytest
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from constellation_kit.model import (
    GroupedMMDispatch,
    RouterL2Penalty,
    RouterZLoss,
    SwitchBalanceLoss,
    GroupedQueryAttention,
    MoEFeedForward,
    SequenceLayout,
    TopKRouter,
    Transformer,
)
from constellation_kit.train import moe_terms
from constellation_kit.train.parallelize import materialize, parallelize
from conftest import free_port

VOCAB, SEQ_LEN = 96, 520  # > the SDPA backend's dense_below (512): the per-document path runs
# Documents per row; the rows share lengths, so the per-document path stacks equal lengths. Two
# distinct lengths only: each one is another (small) compile of the per-length attention call.
DOCUMENTS = ((300, 220), (220, 300))
RTOL, ATOL = 1e-5, 1e-7


def make_network() -> Transformer:
    return Transformer(
        VOCAB,
        d_model=32,
        n_layers=2,
        # One local layer (sliding-window blocks) and one global layer (the per-document operator).
        attention=partial(GroupedQueryAttention, n_heads=4, n_kv_heads=2, backend="sdpa", layer_pattern="LG", window=64),
        moe=partial(
            MoEFeedForward,
            num_experts=4,
            expert_hidden_dim=16,
            router=partial(TopKRouter, top_k=2),
            dispatch=GroupedMMDispatch(),
        ),
        tie_embeddings=True,
    )


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, VOCAB, (len(DOCUMENTS), SEQ_LEN), generator=generator)  # (B, T)
    targets = torch.randint(0, VOCAB, (len(DOCUMENTS), SEQ_LEN), generator=generator)  # (B, T)
    document_ids = torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in DOCUMENTS])
    return tokens, targets, document_ids


# The recipes' balance pieces, coefficients raised so their gradients are not lost under atol.
BALANCE = [SwitchBalanceLoss(0.1), RouterZLoss(0.1), RouterL2Penalty(0.1)]


def loss_and_routing(network: Transformer) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Language-model loss plus the balance terms, as LanguageModel trains; and each layer's expert choices."""
    tokens, targets, document_ids = batch()
    output = network(tokens, SequenceLayout.from_document_ids(document_ids))
    loss = F.cross_entropy(network.logits(output.hidden).flatten(0, 1), targets.flatten())
    routing = moe_terms.routing_layers(output.aux)
    balance, _ = moe_terms.balance_terms(BALANCE, routing)
    return loss + balance, [r.experts_TK for _, r in routing]


def _compare_both(rank: int, port: int) -> None:
    # Both variants in one process: a second spawn would pay torch's import and the compile warm-up again.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=1)
    try:
        # Checkpointed only, as xl.yaml trains: inductor's compile is most of this suite's slowest test,
        # and the uncheckpointed block is the same graph without the checkpoint op (the fast matrix
        # test below compiles it with fullgraph).
        _compare(activation_checkpointing=True)
    finally:
        dist.destroy_process_group()


def _compare(activation_checkpointing: bool) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    with torch.device("meta"):
        compiled = make_network()
    parallelize(
        compiled,
        init_device_mesh("cpu", (1,)),
        activation_checkpointing=activation_checkpointing,
        compile=True,
        param_dtype=None,
        reduce_dtype=None,
    )
    torch.manual_seed(1)
    materialize(compiled, "cpu")
    with torch.device("meta"):
        reference = make_network()
    torch.manual_seed(1)
    materialize(reference, "cpu")

    counters.clear()
    loss, routing = loss_and_routing(compiled)
    loss.backward()
    assert not counters["graph_break"], f"compiled blocks broke the graph: {dict(counters['graph_break'])}"
    expected_loss, expected_routing = loss_and_routing(reference)
    expected_loss.backward()

    # The blocks really were compiled (not silently left eager).
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl for block in compiled.blocks)
    assert len(routing) == 2 and all(torch.equal(a, b) for a, b in zip(routing, expected_routing))
    torch.testing.assert_close(loss, expected_loss, rtol=RTOL, atol=ATOL)
    worst = 0.0
    for (name, p), q in zip(compiled.named_parameters(), reference.parameters(), strict=True):
        grad = p.grad.full_tensor()
        assert q.grad is not None and q.grad.abs().max() > 0, name
        torch.testing.assert_close(grad, q.grad, rtol=RTOL, atol=ATOL, msg=name)
        worst = max(worst, (grad - q.grad).abs().max().item())
    print(f"compile vs eager (activation_checkpointing={activation_checkpointing}): "
          f"|loss diff| {(loss - expected_loss).abs().item():.3g}, max |grad diff| {worst:.3g}")


def test_compiled_checkpointed_blocks_under_fsdp2_match_eager_loss_and_gradients() -> None:
    mp.spawn(_compare_both, args=(free_port(),), nprocs=1, join=True)


def small_network(dtype: torch.dtype) -> Transformer:
    """Block 0 dense with local attention, block 1 MoE with global attention."""
    torch.manual_seed(0)
    return Transformer(
        VOCAB,
        d_model=32,
        n_layers=2,
        attention=partial(GroupedQueryAttention, n_heads=4, n_kv_heads=2, backend="sdpa", layer_pattern="LG", window=64),
        moe=partial(MoEFeedForward, num_experts=4, expert_hidden_dim=16, router=partial(TopKRouter, top_k=2)),
        moe_every=2,
    ).to(dtype)


# (dtype, packed documents, activation checkpointing): each case compiles both blocks once.
CASES = [(torch.float32, True, False), (torch.float32, False, False), (torch.float32, True, True), (torch.bfloat16, True, True)]


def test_every_block_compiles_as_one_graph_and_matches_eager() -> None:
    tokens, targets, document_ids = batch()
    for dtype, packed, activation_checkpointing in CASES:
        torch._dynamo.reset()
        reference, compiled = small_network(dtype), small_network(dtype)
        for index, block in enumerate(compiled.blocks):
            if activation_checkpointing:
                block = checkpoint_wrapper(block)
            # fullgraph: a graph break raises instead of silently splitting the block.
            compiled.blocks[index] = torch.compile(block, fullgraph=True, backend="aot_eager")
        results = []
        for network in (compiled, reference):
            layout = SequenceLayout.from_document_ids(document_ids) if packed else None
            output = network(tokens, layout)
            loss = F.cross_entropy(network.logits(output.hidden).flatten(0, 1).float(), targets.flatten())
            loss = loss + sum(r.logits_TE.square().mean() for _, r in moe_terms.routing_layers(output.aux))
            loss.backward()
            results.append((loss, [p.grad for p in network.parameters()]))
        (loss, grads), (expected_loss, expected_grads) = results
        # fp32 differs by reduction order only; bf16 by the rounding of bf16 ops laid out differently.
        tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        where = f"{dtype}, packed={packed}, activation_checkpointing={activation_checkpointing}"
        torch.testing.assert_close(loss, expected_loss, **tolerance, msg=where)
        for grad, expected in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, expected, **tolerance, msg=where)
