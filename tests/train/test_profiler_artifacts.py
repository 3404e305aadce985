"""The profiling preset's traces end up in the MLflow run they profile."""

from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.profilers import PyTorchProfiler
from torch.utils.data import DataLoader, TensorDataset

from constellation_kit.callbacks import ProfilerTracesToMLflow
from constellation_kit.tracking import MLflowRunLogger
from conftest import tracking_client


class Regression(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_traces_of_the_recorded_steps_are_uploaded(in_tmp_dir: Path) -> None:
    logger = MLflowRunLogger(experiment_name="profiled", system_metrics_interval=None)
    profiler = PyTorchProfiler(dirpath=in_tmp_dir / "profiles", filename="profile", export_to_chrome=True)
    trainer = Trainer(max_steps=6, logger=logger, profiler=profiler, callbacks=[ProfilerTracesToMLflow()],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    data = TensorDataset(torch.randn(24, 4), torch.randn(24, 1))
    trainer.fit(Regression(), DataLoader(data, batch_size=4))
    uploaded = [a.path for a in tracking_client().list_artifacts(logger.run_id, "profile")]
    assert uploaded and all(path.endswith(".pt.trace.json") for path in uploaded)
    assert sorted(Path(p).name for p in uploaded) == sorted(p.name for p in (in_tmp_dir / "profiles").rglob("*.json"))
