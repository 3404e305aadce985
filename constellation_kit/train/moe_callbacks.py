"""Lightning callbacks for MoE training: the auxiliary-loss-free bias balancer and the expert-load heatmap.

They read the (L, E) per-expert token counts that :class:`~constellation_kit.train.LanguageModel`
returns from each training/validation step (:data:`~constellation_kit.train.moe_terms.LOAD_KEY`),
so neither touches the model's forward pass.
"""

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger

from constellation_kit.errors import ConfigError
from constellation_kit.train.moe_terms import LAYERS_KEY, LOAD_KEY, load_statistics

log = logging.getLogger(__name__)


def expert_biases(module: LightningModule) -> list[torch.Tensor]:
    """Every router's ``expert_bias`` buffer (E,), in layer order (the order of the step's counts)."""
    return [m.expert_bias for m in module.modules() if isinstance(getattr(m, "expert_bias", None), torch.Tensor)]


def bias_update(tokens_per_expert_LE: torch.Tensor, rate: float) -> torch.Tensor:
    """DeepSeek-V3's update (§2.1.2): ``Δb_i = γ · sign(mean load − load_i)``, per layer, (L, E).

    Overloaded experts are pushed down and underloaded ones up by the same step, whatever the size
    of the imbalance; a balanced expert (load exactly the mean) is left alone.
    """
    load_LE = tokens_per_expert_LE.float()
    return rate * torch.sign(load_LE.mean(dim=-1, keepdim=True) - load_LE)


class AuxLossFreeBalancer(Callback):
    """Auxiliary-loss-free load balancing (Wang et al. 2024; DeepSeek-V3 §2.1.2).

    After each *optimizer* step (not each micro-batch) adds :func:`bias_update` to every router's
    ``expert_bias``, from the token counts summed over that step's gradient-accumulation
    micro-batches and, when distributed, over all ranks (one all-reduce per optimizer step). So the
    update depends only on the global batch, not on how it is split. The bias steers which experts
    are chosen but not their weights, and gets no gradient; as a buffer it is saved in checkpoints.

    Args:
        update_rate: ``γ``, the bias step per optimizer step (DeepSeek-V3: 1e-3 for most of training).
    """

    def __init__(self, update_rate: float = 1e-3) -> None:
        self.update_rate = update_rate
        self._counts_LE: torch.Tensor | None = None
        self._step_seen = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not expert_biases(pl_module):
            raise ConfigError("AuxLossFreeBalancer is in the callbacks but the model has no router with an expert_bias")
        self._counts_LE = None
        self._step_seen = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not isinstance(outputs, dict) or LOAD_KEY not in outputs:
            return
        counts_LE = outputs[LOAD_KEY].detach()
        self._counts_LE = counts_LE.clone() if self._counts_LE is None else self._counts_LE + counts_LE
        # Lightning runs the optimizer step inside the last micro-batch's training step, so the
        # step counter has already moved when this hook sees that micro-batch.
        if trainer.global_step == self._step_seen:
            return
        self._step_seen = trainer.global_step
        total_LE = trainer.strategy.reduce(self._counts_LE, reduce_op="sum")
        self._counts_LE = None
        biases = expert_biases(pl_module)
        if len(biases) != total_LE.shape[0]:
            raise RuntimeError(f"{len(biases)} routers with expert_bias but counts for {total_LE.shape[0]} MoE layers")
        with torch.no_grad():
            for bias_E, delta_E in zip(biases, bias_update(total_LE, self.update_rate), strict=True):
                bias_E.add_(delta_E.to(bias_E.dtype))


class ExpertLoadHeatmap(Callback):
    """At the end of each validation pass, a PNG heatmap of expert load (MoE layer × expert).

    Each cell is the expert's share of its layer's token copies over the whole validation pass,
    relative to a perfectly balanced share (1.0 = balanced). Saved as
    ``expert_load/step{N}.png`` in every MLflow run (and the run directory when there is one), and
    the validation pass's mean MaxVio is logged as ``moe/val_maxvio``. Needs matplotlib.
    """

    def __init__(self) -> None:
        self._counts_LE: torch.Tensor | None = None
        self._layers: list[int] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._counts_LE = None

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or LOAD_KEY not in outputs:
            return
        counts_LE = outputs[LOAD_KEY].detach()
        self._counts_LE = counts_LE.clone() if self._counts_LE is None else self._counts_LE + counts_LE
        self._layers = list(outputs[LAYERS_KEY])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._counts_LE is None or trainer.sanity_checking:
            return
        counts_LE = trainer.strategy.reduce(self._counts_LE, reduce_op="sum").cpu()
        pl_module.log("moe/val_maxvio", load_statistics(counts_LE)["maxvio"].mean(), sync_dist=False)
        if not trainer.is_global_zero:
            return
        relative_LE = counts_LE.float() / counts_LE.float().mean(dim=-1, keepdim=True).clamp_min(1e-9)
        name = f"step{trainer.global_step:07d}.png"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            self.draw(relative_LE, self._layers, trainer.global_step, path)
            for logger in trainer.loggers:
                if isinstance(logger, MLFlowLogger):
                    logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="expert_load")
                run_dir = getattr(logger, "run_dir", None)
                if run_dir is not None:
                    (Path(run_dir) / "expert_load").mkdir(parents=True, exist_ok=True)
                    (Path(run_dir) / "expert_load" / name).write_bytes(path.read_bytes())

    @staticmethod
    def draw(relative_LE: torch.Tensor, layers: list[int], step: int, path: Path) -> None:
        """Write the heatmap of ``relative_LE`` (L, E) to ``path``."""
        import matplotlib

        matplotlib.use("Agg")  # no display on training machines
        import matplotlib.pyplot as plt

        num_layers, num_experts = relative_LE.shape
        fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * num_experts + 2), max(2.5, 0.4 * num_layers + 1.5)))
        image = ax.imshow(relative_LE.numpy(), cmap="viridis", aspect="auto", vmin=0.0)
        ax.set_xlabel("expert")
        ax.set_ylabel("MoE layer")
        ax.set_yticks(range(num_layers), [str(i) for i in layers] if len(layers) == num_layers else None)
        ax.set_title(f"expert load / balanced load, validation at step {step}")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
