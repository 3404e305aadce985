"""The FSDP2 training strategy: Lightning's ModelParallelStrategy plus the kit's parallelize step."""

from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint.state_dict import _init_optim_state

from constellation_kit.checkpointing import (
    commit_checkpoint_swap,
    new_token,
    prepare_checkpoint_swap,
    remove_checkpoint,
    staging_path,
)
from constellation_kit.errors import ConfigError
from constellation_kit.train.parallelize import parallelize_module


class FSDP2Strategy(ModelParallelStrategy):
    """Sharded data parallelism with PyTorch FSDP2 (``fully_shard``), on CPUs (gloo) or GPUs (NCCL).

    The LightningModule's ``configure_model`` runs on the meta device (:meth:`model_sharded_context`)
    and its ``parallel_parts()`` names the modules it built: the network, and a multimodal model's
    encoders and projectors. :meth:`setup` hands them all to
    :func:`~constellation_kit.train.parallelize.parallelize_module`, which applies activation
    checkpointing, compile and ``fully_shard`` per block in one fixed order under one mixed-precision
    policy, allocates and initialises only this rank's shards, then calls the module's
    ``load_initial_weights()`` (its ``init_from``). The module never asks which strategy runs it.

    Checkpoints are sharded (PyTorch distributed checkpoint, one directory) and load at any world
    size; ``last.ckpt`` is a link swapped atomically to each new complete directory, so a kill at any
    moment leaves a complete one (:mod:`constellation_kit.checkpointing`).

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

    @contextmanager
    def model_sharded_context(self) -> Generator[None, None, None]:
        """``configure_model`` builds on the meta device: no weight exists in full before it is sharded."""
        with torch.device("meta"):
            yield

    def setup(self, trainer) -> None:
        self.parallelize(self.lightning_module)
        super().setup(trainer)

    def parallelize(self, module: torch.nn.Module) -> None:
        """Shard ``module.parallel_parts()`` over the data-parallel mesh and materialise this rank's shards
        (:func:`~constellation_kit.train.parallelize.parallelize_module`)."""
        parallel_parts = getattr(module, "parallel_parts", None)
        if not callable(parallel_parts):
            raise ConfigError(f"{type(self).__name__} shards the modules a LightningModule lists in parallel_parts(); "
                              f"{type(module).__name__} has no such method: add one returning its networks")
        parallelize_module(
            module,
            self.device_mesh["data_parallel"],
            self.root_device,
            activation_checkpointing=self.activation_checkpointing,
            compile=self.compile,
            param_dtype=torch.bfloat16 if self.mixed_precision else None,
            reduce_dtype=torch.float32 if self.mixed_precision else None,
        )

    def setup_optimizers(self, trainer) -> None:
        super().setup_optimizers(trainer)
        # Give every parameter its optimizer state now (a zero-LR step on zero gradients, as
        # torch's own distributed state-dict code does): a parameter that has not received a
        # gradient yet (a ViT's class token on a text-only batch) would otherwise be missing from
        # the checkpoint, and loading it into a fresh optimizer fails.
        for optimizer in self.optimizers:
            _init_optim_state(optimizer)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        """Write a sharded checkpoint to ``filepath`` so that it is never missing nor half-written.

        Every rank writes into a fresh hidden directory; rank 0 then swaps the link ``filepath``
        over to it (:mod:`constellation_kit.checkpointing`). A failure on any rank raises on every
        rank, so none waits at a barrier for a rank that has died.
        """
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path, token = self.broadcast((str(filepath), new_token()))
        path = Path(path)
        self._on_rank_zero(lambda: prepare_checkpoint_swap(path), f"preparing {path}")
        try:
            super().save_checkpoint(checkpoint, staging_path(path, token), storage_options)
            error = None
        except Exception as e:  # noqa: BLE001 (re-raised below, once every rank knows)
            error = e
        if self.reduce_boolean_decision(error is not None, all=False):
            raise RuntimeError(f"writing checkpoint {path} failed on a rank") from error
        self._on_rank_zero(lambda: commit_checkpoint_swap(path, token), f"swapping in {path}")

    def _on_rank_zero(self, step: Callable[[], None], what: str) -> None:
        # Rank 0 alone touches the link; the broadcast both waits for it and carries its outcome,
        # so an error there (a full disk, a read-only leftover) stops every rank instead of hanging them.
        error: Exception | None = None
        if self.global_rank == 0:
            try:
                step()
            except Exception as e:  # noqa: BLE001 (re-raised below on every rank)
                error = e
        message = self.broadcast(None if error is None else f"{type(error).__name__}: {error}")
        if message is not None:
            raise RuntimeError(f"{what} failed on rank 0: {message}") from error

    def remove_checkpoint(self, filepath: _PATH) -> None:
        """Delete a checkpoint; a sharded one's link goes together with its hidden directory."""
        if self.is_global_zero and Path(filepath).is_symlink():
            remove_checkpoint(Path(filepath))
        else:
            super().remove_checkpoint(filepath)
