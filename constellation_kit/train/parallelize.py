"""Parallelism applied to a single-device network, in one place and one fixed order.

The model package never imports ``torch.distributed``; this module is the one step that turns its
plain network into a sharded one (torchtitan's ``parallelize`` pattern):

1. activation checkpointing per block (recompute the block in backward instead of storing it);
2. ``torch.compile`` per block (each block compiles once; identical blocks share the cache);
3. FSDP2 ``fully_shard`` per block, then on the root: parameters sharded over the data-parallel
   mesh, gathered block by block for compute (bf16 parameters), gradients reduced in fp32.

The order matters: checkpointing and compile wrap the computation, FSDP wraps the result, so the
all-gather happens outside the recomputed and compiled region.
"""

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from constellation_kit.model.transformer import Transformer


def parallelize(
    network: Transformer,
    mesh: DeviceMesh,
    *,
    activation_checkpointing: bool = False,
    compile: bool = False,
    param_dtype: torch.dtype | None = torch.bfloat16,
    reduce_dtype: torch.dtype | None = torch.float32,
) -> Transformer:
    """Apply activation checkpointing, compile and FSDP2 to ``network`` in place, in that order.

    ``network`` may (and at scale should) still be on the meta device; :func:`materialize` then
    allocates and initialises each rank's shards. ``param_dtype=None`` keeps parameters in their
    storage dtype for compute (exact fp32 on CPU, as the tests use).
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for index, block in enumerate(network.blocks):
        if activation_checkpointing:
            block = checkpoint_wrapper(block)
        if compile:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=policy)
        network.blocks[index] = block
    # The root unit holds the embedding, the final norm and the head; it is not resharded after
    # forward (FSDP2's default for the root), so the loss can read the head right after forward.
    fully_shard(network, mesh=mesh, mp_policy=policy)
    return network


@torch.no_grad()
def materialize(network: nn.Module, device: torch.device | str) -> None:
    """Allocate a meta-device (possibly sharded) network on ``device`` and initialise it.

    Every module with its own parameters or buffers is initialised by its ``reset_parameters()``.
    A sharded parameter is initialised at full size, identically on every rank, and each rank keeps
    only its shard: so the initial weights are the same at any world size, and the same as an
    unsharded network materialised the same way. (Calling ``reset_parameters()`` on the shards
    directly would, on CPU, give every rank the same random shard: DTensor's distributed RNG only
    covers CUDA-like devices.) Memory cost: one full parameter at a time.
    """
    network.to_empty(device=device)
    for module in network.modules():
        reset = getattr(module, "reset_parameters", None)
        own = dict(module.named_parameters(recurse=False))
        if not callable(reset) or not (own or any(True for _ in module.buffers(recurse=False))):
            continue
        sharded = {name: p for name, p in own.items() if isinstance(p, DTensor)}
        for name, param in sharded.items():
            full = torch.empty(param.shape, dtype=param.dtype, device=param.to_local().device)
            module._parameters[name] = nn.Parameter(full, requires_grad=param.requires_grad)
        reset()
        for name, param in sharded.items():
            full = module._parameters[name].data
            # src_data_rank=None: every rank holds the same full tensor, so each slices its own
            # shard locally, with no communication.
            local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
            param.to_local().copy_(local)
            module._parameters[name] = param
