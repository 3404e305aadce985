"""The run's tokenizer inside every checkpoint, so a checkpoint alone can be evaluated, sampled or exported.

Without it, turning text into the ids a checkpoint was trained on needs the run's data: the cached
tokenizer, or the corpus to retrain it from. :class:`TokenizerInCheckpoint` (added to every run by the
CLI) stores the data module's ``tokenizer`` as its JSON string under ``checkpoint["tokenizer"]``
(a few hundred KB at a 32k vocabulary); :func:`constellation_kit.trained_model.load_trained_model` reads it.
"""

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from constellation_kit.trained_model import TOKENIZER_KEY


class TokenizerInCheckpoint(Callback):
    """Writes ``trainer.datamodule.tokenizer.to_str()`` into each checkpoint under ``"tokenizer"``.

    Does nothing when the data module has no ``tokenizer`` (a plain LightningDataModule).
    """

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is not None:
            checkpoint[TOKENIZER_KEY] = tokenizer.to_str()
