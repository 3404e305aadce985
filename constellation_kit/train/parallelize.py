"""Parallelism applied to single-device modules, in one place, one fixed order and one precision policy.

The model package never imports ``torch.distributed``; this module is the one step that turns its
plain modules into sharded ones (torchtitan's ``parallelize`` pattern). A model is one or more
*parts*, each its own FSDP2 root: the language network, and for a multimodal model each encoder
and each projector. A part's repeated layers are its ``blocks`` (an ``nn.ModuleList`` or
``nn.Sequential``: the network's transformer blocks, a ViT's or the audio encoder's layers).
For every part:

1. activation checkpointing per block (recompute the block in backward instead of storing it),
   skipped for a frozen part, which stores no activations for backward anyway;
2. ``torch.compile`` per block (each block compiles once; identical blocks share the cache);
3. FSDP2 ``fully_shard`` per block, then on the part: parameters sharded over the data-parallel
   mesh, gathered block by block for compute (bf16 parameters), gradients reduced in fp32, with
   one :class:`MixedPrecisionPolicy` for every part.

The order matters: checkpointing and compile wrap the computation, FSDP wraps the result, so the
all-gather happens outside the recomputed and compiled region. A part without blocks (a
projector, a CNN encoder) is sharded whole and neither checkpointed nor compiled: it holds no
repeated layer to recompute or compile once for all.

None of this changes a state-dict key: the checkpoint wrapper's hooks strip its prefix, and compile
works in place (no ``_orig_mod.``), so sharded and single-device checkpoints stay interchangeable.
"""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor


def blocks_of(part: nn.Module) -> nn.ModuleList | nn.Sequential | None:
    """``part``'s repeated layers, which parallelize wraps one by one; ``None`` when it has none."""
    blocks = getattr(part, "blocks", None)
    return blocks if isinstance(blocks, (nn.ModuleList, nn.Sequential)) else None


def parallelize(
    parts: nn.Module | Iterable[nn.Module],
    mesh: DeviceMesh,
    *,
    activation_checkpointing: bool = False,
    compile: bool = False,
    param_dtype: torch.dtype | None = torch.bfloat16,
    reduce_dtype: torch.dtype | None = torch.float32,
) -> nn.Module | list[nn.Module]:
    """Apply activation checkpointing, compile and FSDP2 to each part in place, in that order.

    ``parts`` is one module or several (each becomes its own FSDP root); they may (and at scale
    should) still be on the meta device: :func:`materialize` then allocates and initialises each
    rank's shards. ``param_dtype=None`` keeps parameters in their storage dtype for compute (exact
    fp32 on CPU, as the tests use). Returns ``parts``.
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for part in [parts] if isinstance(parts, nn.Module) else list(parts):
        _parallelize_part(part, mesh, policy, activation_checkpointing, compile)
    return parts


def _parallelize_part(
    part: nn.Module, mesh: DeviceMesh, policy: MixedPrecisionPolicy, activation_checkpointing: bool, compile: bool
) -> None:
    blocks = blocks_of(part)
    trainable = any(p.requires_grad for p in part.parameters())
    for index, block in enumerate(blocks if blocks is not None else []):
        if activation_checkpointing and trainable:
            block = checkpoint_wrapper(block)
        if compile:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=policy)
        blocks[index] = block
    # The part's own unit holds what is outside its blocks (the network's embedding, final norm and
    # head; an encoder's stem). As a root it is not resharded after forward (FSDP2's default), so the
    # loss can read the network's head right after forward.
    fully_shard(part, mesh=mesh, mp_policy=policy)


def parallelize_module(
    module: nn.Module,
    mesh: DeviceMesh,
    device: torch.device | str,
    *,
    activation_checkpointing: bool = False,
    compile: bool = False,
    param_dtype: torch.dtype | None = torch.bfloat16,
    reduce_dtype: torch.dtype | None = torch.float32,
) -> None:
    """:func:`parallelize` every part ``module.parallel_parts()`` lists, materialise those built on the meta
    device, then let the module load its starting weights (``module.load_initial_weights()``, if any).

    The contract between a LightningModule and a sharding strategy: the module builds its parts in
    ``configure_model`` on whatever device is the default (the strategy makes it the meta device)
    and lists them; the strategy decides what happens to them. Parts sharded already (by an earlier
    ``fit`` of the same module) are left as they are.
    """
    parts = [part for part in module.parallel_parts() if not isinstance(part, FSDPModule)]
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    built_on_meta = False
    for part in parts:
        on_meta = any(p.is_meta for p in part.parameters())
        built_on_meta |= on_meta
        if on_meta and _initialises_subtree(part):
            # An encoder's initialiser (timm's, then a pretrained load_state_dict) covers its whole
            # subtree: it runs on the unsharded part, at full size and identically on every rank,
            # which fully_shard then slices. One encoder at a time, never the network.
            materialize(part, device)
            on_meta = False
        _parallelize_part(part, mesh, policy, activation_checkpointing, compile)
        if on_meta:
            materialize(part, device)
    load_initial_weights = getattr(module, "load_initial_weights", None)
    if built_on_meta and callable(load_initial_weights):
        load_initial_weights()


@torch.no_grad()
def materialize(part: nn.Module, device: torch.device | str) -> None:
    """Allocate a meta-device (possibly sharded) module on ``device`` and initialise it.

    Every module with its own parameters or buffers is initialised by its ``reset_parameters()``;
    a module with a ``reset_parameters()`` but no state of its own (an encoder that re-runs timm's
    initialisation, then loads pretrained weights) initialises its whole subtree instead.
    A sharded parameter is initialised at full size, identically on every rank, and each rank keeps
    only its shard: so the initial weights are the same at any world size, and the same as an
    unsharded module materialised the same way. (Calling ``reset_parameters()`` on the shards
    directly would, on CPU, give every rank the same random shard: DTensor's distributed RNG only
    covers CUDA-like devices.) Memory cost: one full parameter at a time, or one whole subtree.
    A subtree initialiser that loads a state dict must run before sharding (FSDP2's post-load hook
    expects its sharded parameters in place), as :func:`parallelize_module` does.
    """
    part.to_empty(device=device)
    _initialise(part)


def _initialise(module: nn.Module) -> None:
    if _initialises_subtree(module):
        with _full_size(module.modules()):
            module.reset_parameters()
        return
    if _has_reset(module) and _has_state(module, recurse=False):
        with _full_size([module]):
            module.reset_parameters()
    for child in module.children():
        _initialise(child)


def _has_reset(module: nn.Module) -> bool:
    # The class's method, not getattr: a checkpoint wrapper forwards attribute lookups to the module
    # it wraps, and would pass for a subtree initialiser that covers only the wrapped module's own state.
    return callable(getattr(type(module), "reset_parameters", None))


def _initialises_subtree(module: nn.Module) -> bool:
    """Whether ``module``'s ``reset_parameters`` initialises everything below it: it has one, and no state of its own."""
    return _has_reset(module) and not _has_state(module, recurse=False) and _has_state(module, recurse=True)


def _has_state(module: nn.Module, recurse: bool) -> bool:
    return any(True for _ in module.parameters(recurse=recurse)) or any(True for _ in module.buffers(recurse=recurse))


@contextmanager
def _full_size(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Swap the modules' own sharded parameters for full-size ones, then keep each rank's shard of them."""
    sharded = [(module, name, param) for module in modules for name, param in module._parameters.items()
               if isinstance(param, DTensor)]
    for module, name, param in sharded:
        full = torch.empty(param.shape, dtype=param.dtype, device=param.to_local().device)
        module._parameters[name] = nn.Parameter(full, requires_grad=param.requires_grad)
    yield
    for module, name, param in sharded:
        full = module._parameters[name].data
        # src_data_rank=None: every rank holds the same full tensor, so each slices its own shard
        # locally, with no communication.
        local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
        param.to_local().copy_(local)
        module._parameters[name] = param
