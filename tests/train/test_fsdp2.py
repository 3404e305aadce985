"""FSDP2 on CPU: two gloo processes shard, train, checkpoint and resume at another world size."""

import os
from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, RouterL2Penalty, RouterZLoss, SwiGLU, Transformer
from constellation_kit.train.moe_terms import routing_layers
from constellation_kit.train.parallelize import materialize, parallelize
from conftest import free_port


def make_network() -> Transformer:
    return Transformer(
        100,
        d_model=32,
        n_layers=2,
        attention=partial(GroupedQueryAttention, n_heads=4, n_kv_heads=2),
        feed_forward=partial(SwiGLU, hidden_dim=64),
        tie_embeddings=True,
    )


def loss_of(network: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    hidden = network(tokens[:, :-1]).hidden
    return F.cross_entropy(network.logits(hidden).flatten(0, 1), tokens[:, 1:].flatten())


def _shard_and_compare(rank: int, world_size: int, port: int, activation_checkpointing: bool,
                       make: Callable[[], Transformer] = make_network,
                       loss: Callable[[Transformer, torch.Tensor], torch.Tensor] = loss_of) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        with torch.device("meta"):
            sharded = make()
        parallelize(sharded, init_device_mesh("cpu", (world_size,)), activation_checkpointing=activation_checkpointing,
                    param_dtype=None, reduce_dtype=None)
        torch.manual_seed(1)
        materialize(sharded, "cpu")
        with torch.device("meta"):
            reference = make()
        torch.manual_seed(1)
        materialize(reference, "cpu")
        # Same initial weights at world size 2 as unsharded: materialise inits at full size.
        for (name, p), q in zip(sharded.named_parameters(), reference.parameters()):
            assert torch.equal(p.full_tensor(), q), name
        tokens = torch.randint(0, 100, (4, 9), generator=torch.Generator().manual_seed(5))
        per_rank = len(tokens) // world_size
        loss(sharded, tokens[rank * per_rank : (rank + 1) * per_rank]).backward()
        loss(reference, tokens).backward()
        # FSDP2 averages gradients over ranks: the mean of equal halves is the full batch's gradient.
        for (name, p), q in zip(sharded.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=1e-5, atol=1e-6, msg=name)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_sharded_network_matches_single_process_init_and_gradients(activation_checkpointing: bool) -> None:
    mp.spawn(_shard_and_compare, args=(2, free_port(), activation_checkpointing), nprocs=2, join=True)


def make_moe_network() -> Transformer:
    return Transformer(
        100,
        d_model=32,
        n_layers=2,
        attention=partial(GroupedQueryAttention, n_heads=4, n_kv_heads=2),
        moe=partial(MoEFeedForward, num_experts=4, expert_hidden_dim=16),
        moe_every=1,
        tie_embeddings=True,
    )


def moe_loss_of(network: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """LM loss plus the router terms that average exactly over equal shards: the weight's L2 and the z-loss."""
    output = network(tokens[:, :-1])
    routing = routing_layers(output.aux)
    assert [index for index, _ in routing] == [0, 1]  # every MoE layer's router output reached the caller
    lm = F.cross_entropy(network.logits(output.hidden).flatten(0, 1), tokens[:, 1:].flatten())
    return lm + RouterL2Penalty(1e-2).value(routing) * 1e-2 + RouterZLoss(1e-2).value(routing) * 1e-2


def test_sharded_moe_network_returns_router_outputs_and_their_gradients_match() -> None:
    # The router terms read the router weight and logits inside each block's forward; under FSDP2 the
    # blocks' outputs are the only way out (it rebuilds their input containers), and the weight must
    # be read while it is gathered (it is freed after the block's forward). Gradients of both terms
    # must equal the unsharded network's.
    mp.spawn(_shard_and_compare, args=(2, free_port(), True, make_moe_network, moe_loss_of), nprocs=2, join=True)
