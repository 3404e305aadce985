"""Every MoE variant trains; balance pieces and telemetry reach MLflow; the heatmap is an artifact."""

from pathlib import Path

import pytest
import torch

from constellation_kit.cli import ConstellationCLI
from constellation_kit.model import RouterZLoss
from constellation_kit.train.moe_terms import balance_terms, load_statistics
from conftest import REPO, SMALL_DATA, TINY, tracking_client
from test_cli import assert_loss_is_reported_loss_plus_balance, loss_terms

VARIANTS = sorted((REPO / "recipes" / "variants").glob("*.yaml"))
MOE_VARIANTS = [p for p in VARIANTS if p.stem.startswith(("moe-", "router-", "dense"))]
TWO_STEPS = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2",
             "--trainer.log_every_n_steps=1"]
RECORD_LOSS_TERMS = '--trainer.callbacks+={"class_path": "test_cli.RecordLossTerms"}'


def metrics_of(cli: ConstellationCLI) -> dict[str, float]:
    return tracking_client().get_run(cli.trainer.logger.run_id).data.metrics


@pytest.mark.slow
@pytest.mark.parametrize("variant", MOE_VARIANTS, ids=lambda p: p.name)
def test_variant_trains_two_steps(variant: Path, in_tmp_dir: Path) -> None:
    # No validation (limit_val_batches=0, which ValidateAtStart honours too): nothing here reads it, and
    # each pass also scores every grounding question; the heatmap test below covers validation.
    cli = ConstellationCLI(args=["fit", f"--config={TINY}", f"--config={variant}", *SMALL_DATA, *TWO_STEPS,
                                 "--trainer.limit_val_batches=0", RECORD_LOSS_TERMS])
    assert cli.trainer.global_step == 2
    records = loss_terms(in_tmp_dir)
    assert len(records) == 2  # one micro-batch per step
    # The loss optimised is train/loss plus Σ coefficient x moe/<name>, every step, for every variant.
    # train/loss here is the LM loss plus 0.1 x train/alignment_loss (tiny has InfoNCE alignment).
    assert all(r["reported"] == pytest.approx(r["logged_loss"], rel=1e-7) for r in records)  # one process
    assert_loss_is_reported_loss_plus_balance(records, moe=variant.stem != "dense")
    metrics = metrics_of(cli)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    if variant.stem == "dense":
        assert not any(name.startswith("moe/") for name in metrics)
        return
    assert {"moe/maxvio", "moe/cv", "moe/dead", "moe/router_entropy", "moe/dropped_fraction",
            "moe/layer1/maxvio", "moe/router_z_loss"} <= set(metrics)
    assert ("moe/switch_balance" in metrics) == (variant.stem not in ("moe-auxfree",))
    assert ("moe/router_l2" in metrics) == (variant.stem != "router-l2-off")
    biases = [b for name, b in cli.model.network.named_buffers() if name.endswith("expert_bias")]
    moved = any(torch.count_nonzero(b) for b in biases)
    assert moved == (variant.stem == "moe-auxfree")  # only the aux-free balancer touches the bias


@pytest.mark.slow
def test_heatmap_preset_logs_a_png_per_validation(in_tmp_dir: Path) -> None:
    preset = REPO / "callbacks" / "moe-monitoring.yaml"
    cli = ConstellationCLI(args=["fit", f"--config={TINY}", f"--config={preset}", *SMALL_DATA, *TWO_STEPS])
    client = tracking_client()
    pngs = [a.path for a in client.list_artifacts(cli.trainer.logger.run_id, "expert_load")]
    assert pngs == ["expert_load/step0000000.png", "expert_load/step0000002.png"]  # step-0 baseline and end
    assert (cli.trainer.logger.run_dir / "expert_load" / "step0000002.png").read_bytes()[:4] == b"\x89PNG"
    assert "moe/val_maxvio" in metrics_of(cli)


def test_load_statistics_on_known_counts() -> None:
    stats = load_statistics(torch.tensor([[4, 4, 4, 4], [8, 4, 4, 0]]))
    torch.testing.assert_close(stats["maxvio"], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(stats["dead"], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(stats["cv"], torch.tensor([0.0, (8.0 ** 0.5) / 4]))


def test_balance_total_is_the_coefficient_weighted_sum() -> None:
    from constellation_kit.model import RouterOutput

    logits = torch.randn(3, 4)
    routing = RouterOutput(logits, logits.softmax(-1), torch.ones(3, 1), torch.zeros(3, 1, dtype=torch.long),
                           torch.tensor([3, 0, 0, 0]), torch.zeros(4, 2))
    total, values = balance_terms([RouterZLoss(coefficient=0.5)], [(0, routing)])
    assert set(values) == {"moe/router_z_loss"}
    torch.testing.assert_close(total, 0.5 * values["moe/router_z_loss"])
