from pathlib import Path

import mlflow
import pytest

from constellation_kit.cli import ConstellationCLI
from constellation_kit.model.flops import active_parameters, training_flops_per_token
from conftest import REPO, SMALL_DATA, TINY


def test_throughput_preset_logs_tokens_and_flops_from_active_parameters(in_tmp_dir: Path) -> None:
    cli = ConstellationCLI(args=[
        "fit", f"--config={TINY}", f"--config={REPO / 'callbacks' / 'throughput.yaml'}", *SMALL_DATA,
        "--trainer.max_steps=4", "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1",
        "--trainer.callbacks.init_args.window_size=2",
    ])
    network = cli.model.network
    expected = 4 * 32 * training_flops_per_token(network, 32)  # micro-batch 4 x seq_len 32
    assert cli.model.flops_per_batch == pytest.approx(expected)
    run = mlflow.MlflowClient("sqlite:///mlflow.db").get_run(cli.trainer.logger.run_id)
    assert run.data.metrics["train/device/items_per_sec"] > 0
    assert run.data.metrics["train/device/flops_per_sec"] == pytest.approx(
        run.data.metrics["train/device/batches_per_sec"] * expected, rel=1e-3)


def test_dense_flops_are_six_n_plus_attention() -> None:
    from functools import partial

    from constellation_kit.model import GroupedQueryAttention, SwiGLU, Transformer

    network = Transformer(64, d_model=16, n_layers=2, attention=partial(GroupedQueryAttention, n_heads=2),
                          feed_forward=partial(SwiGLU, hidden_dim=32))
    n = sum(p.numel() for p in network.parameters())
    assert active_parameters(network) == n
    # untied: the embedding lookup is not a matmul; attention 12 * heads * head_dim * T/2 per layer
    assert training_flops_per_token(network, 10) == 6 * (n - 64 * 16) + 2 * 12 * 2 * 8 * 5
