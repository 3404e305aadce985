"""The kit's own Lightning callbacks."""

from lightning.pytorch import Callback, LightningModule, Trainer


class ValidateAtStart(Callback):
    """Runs one validation pass before the first optimizer step of a fresh run.

    The step-0 ``val/loss`` is the baseline every curve is read against, and a sanity check of
    the initialisation: for a well-initialised language model it sits near ``ln(vocab_size)``
    (nanoGPT evaluates at iteration 0 for the same reason). Lightning's sanity check runs the
    same loop but discards its metrics. A resumed run skips it: its baseline is already logged.
    """

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != 0 or trainer.limit_val_batches == 0:
            return
        val_loop = trainer.fit_loop.epoch_loop.val_loop
        trainer.validating = True
        val_loop.run()
        trainer.training = True


# MoE callbacks live beside the MoE training code; re-exported so recipes name them here.
from constellation_kit.train.moe_callbacks import AuxLossFreeBalancer, ExpertLoadHeatmap  # noqa: E402

__all__ = ["AuxLossFreeBalancer", "ExpertLoadHeatmap", "ValidateAtStart"]
