"""The long-context recipe trains through the real CLI, and its checkpoint reads at 2x with YaRN."""

from pathlib import Path

import pytest

from constellation_kit.cli import ConstellationCLI
from conftest import REPO

LONG_CONTEXT = str(REPO / "recipes" / "long-context.yaml")
SMALL = [
    "--data.init_args.num_train_examples=16",
    "--data.init_args.num_val_examples=8",
    "--data.init_args.global_batch_size=4",
    "--trainer.max_steps=2",
    "--trainer.val_check_interval=2",
    "--trainer.limit_val_batches=1",
]
ATTENTION = "--model.init_args.network.init_args.attention.init_args"


@pytest.mark.slow
def test_long_context_recipe_fits_then_validates_at_twice_the_length_with_yarn(in_tmp_dir: Path) -> None:
    fit = ConstellationCLI(args=["fit", f"--config={LONG_CONTEXT}", *SMALL])
    assert fit.trainer.global_step == 2
    network = fit.model.network
    assert [b.attention.kind for b in network.blocks] == ["local", "global"]
    assert 0.0 <= float(fit.trainer.callback_metrics["val/accuracy"]) <= 1.0
    ckpt = next((fit.trainer.logger.run_dir / "checkpoints").glob("last.ckpt"))

    validate = ConstellationCLI(args=[
        "validate", f"--config={LONG_CONTEXT}", *SMALL, f"--ckpt_path={ckpt}",
        "--data.init_args.val_seq_len=256", f"{ATTENTION}.rope_scaling.kind=yarn", f"{ATTENTION}.rope_scaling.factor=2.0",
    ])
    rope = validate.model.network.blocks[1].attention.rope
    assert rope.scaling.kind == "yarn" and rope.magnitude > 1.0
    assert validate.datamodule.val_dataset.inputs.shape[1] == 256
    assert "val/accuracy" in validate.trainer.callback_metrics
