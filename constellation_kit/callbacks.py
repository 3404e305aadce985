"""The kit's own Lightning callbacks."""

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class ValidateAtStart(Callback):
    """Runs one validation pass before the first optimizer step of a fresh run.

    The step-0 ``val/loss`` is the baseline every curve is read against, and a sanity check of
    the initialisation: for a well-initialised language model it sits near ``ln(vocab_size)``
    (nanoGPT evaluates at iteration 0 for the same reason). Lightning's sanity check runs the
    same loop but discards its metrics. A resumed run skips it: its baseline is already logged.

    It runs at the first training batch rather than at ``on_train_start``, so that every other
    callback (a ThroughputMonitor's clocks, for one) has started before validation begins.
    """

    def __init__(self) -> None:
        self._done = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._done or trainer.global_step != 0 or trainer.limit_val_batches == 0:
            self._done = True
            return
        self._done = True
        # As Lightning's own epoch loop does around a mid-epoch validation: keep the logger
        # connector's per-batch state, which validation resets, for the batch that is starting.
        connector = trainer._logger_connector
        first_loop_iter = connector._first_loop_iter
        trainer.validating = True
        trainer.fit_loop.epoch_loop.val_loop.run()
        trainer.training = True
        connector._first_loop_iter = first_loop_iter


# Callbacks that live beside the training code they serve; re-exported so recipes name them here.
from constellation_kit.train.cpu_memory import KeepFreedMemory  # noqa: E402
from constellation_kit.train.moe_callbacks import AuxLossFreeBalancer, ExpertLoadHeatmap  # noqa: E402
from constellation_kit.train.profiler_artifacts import ProfilerTracesToMLflow  # noqa: E402

__all__ = ["AuxLossFreeBalancer", "ExpertLoadHeatmap", "KeepFreedMemory", "ProfilerTracesToMLflow", "ValidateAtStart"]
