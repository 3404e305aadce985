"""The FSDP2 training strategy: Lightning's ModelParallelStrategy plus the kit's parallelize step."""

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint.state_dict import _init_optim_state
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from constellation_kit.model.transformer import Transformer
from constellation_kit.train.parallelize import materialize, parallelize


class FSDP2Strategy(ModelParallelStrategy):
    """Sharded data parallelism with PyTorch FSDP2 (``fully_shard``), on CPUs (gloo) or GPUs (NCCL).

    The LightningModule builds its network on the meta device and hands it to :meth:`parallelize`,
    which applies activation checkpointing, compile and ``fully_shard`` per block in one fixed order
    (:func:`constellation_kit.train.parallelize.parallelize`) and then allocates and initialises only
    this rank's shards. Checkpoints are sharded (PyTorch distributed checkpoint, one directory),
    written under a temporary name and renamed into place, and load at any world size.

    Lightning's older ``FSDPStrategy`` (FSDP1) refuses a CPU accelerator; this one is tested on CPU.

    Args:
        activation_checkpointing: recompute each block in backward instead of keeping its activations.
        compile: ``torch.compile`` each block.
        mixed_precision: bf16 parameters and compute with fp32 gradient reduction; ``False`` keeps
            everything in the parameters' dtype (fp32), as the exactness tests do.
        data_parallel_size: size of the sharding mesh; ``"auto"`` means all processes.
        save_distributed_checkpoint: write sharded checkpoints (a directory per checkpoint); ``False``
            gathers a single-file checkpoint on rank 0 (only for models that fit in one process).
        process_group_backend: ``"gloo"`` for CPUs, ``"nccl"`` for GPUs; ``None`` picks by accelerator.
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        compile: bool = False,
        mixed_precision: bool = True,
        data_parallel_size: int | str = "auto",
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )
        self.activation_checkpointing = activation_checkpointing
        self.compile = compile
        self.mixed_precision = mixed_precision

    def setup_environment(self) -> None:
        # Pure data parallelism: with tensor_parallel_size fixed at 1, "auto" must mean every
        # process (Lightning's "auto" would mean one replica per node, for node-local TP).
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def parallelize(self, network: Transformer) -> Transformer:
        """Shard a meta-device ``network`` over the data-parallel mesh and materialise this rank's shards."""
        parallelize(
            network,
            self.device_mesh["data_parallel"],
            activation_checkpointing=self.activation_checkpointing,
            compile=self.compile,
            param_dtype=torch.bfloat16 if self.mixed_precision else None,
            reduce_dtype=torch.float32 if self.mixed_precision else None,
        )
        materialize(network, self.root_device)
        return network

    def setup_optimizers(self, trainer) -> None:
        super().setup_optimizers(trainer)
        # Give every parameter its optimizer state now (a zero-LR step on zero gradients, as
        # torch's own distributed state-dict code does): a parameter that has not received a
        # gradient yet (a ViT's class token on a text-only batch) would otherwise be missing from
        # the checkpoint, and loading it into a fresh optimizer fails.
        for optimizer in self.optimizers:
            _init_optim_state(optimizer)

    def shard(self, module: torch.nn.Module) -> torch.nn.Module:
        """``fully_shard`` an already-built module (e.g. an encoder) with the same mesh and precision."""
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if self.mixed_precision else None,
            reduce_dtype=torch.float32 if self.mixed_precision else None,
        )
        fully_shard(module, mesh=self.device_mesh["data_parallel"], mp_policy=policy)
        return module

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        # Write the whole directory under a temporary name, then swap it in: a run killed while
        # writing leaves the previous checkpoint complete and the partial one under a name that
        # `--ckpt_path last` never matches.
        path = Path(self.broadcast(str(filepath)))
        staging = path.with_name(f".{path.name}.tmp")
        if self.global_rank == 0 and staging.exists():
            shutil.rmtree(staging)
        self.barrier("staging-clean")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("staging-written")
        if self.global_rank == 0:
            retired = path.with_name(f".{path.name}.old")
            if path.exists():
                path.rename(retired)
            staging.rename(path)
            if retired.exists():
                shutil.rmtree(retired) if retired.is_dir() else retired.unlink()
        self.barrier("checkpoint-in-place")
