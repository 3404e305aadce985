import json

import pytest

from constellation_kit.cli import main
from conftest import REPO, TINY


def plan(capsys: pytest.CaptureFixture, *args: str) -> dict:
    main(["plan", f"--config={TINY}", "--json=true", *args])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_plan_counts_the_recipe_model_and_batch(capsys: pytest.CaptureFixture) -> None:
    result = plan(capsys, "--devices=1", f"--config={REPO / 'recipes' / 'variants' / 'dense.yaml'}")
    # tiny, dense: 2048-token vocabulary (tied), d_model 128, 4 blocks of GQA (4 heads, 2 KV) + SwiGLU(384)
    d, hidden, layers = 128, 384, 4
    block = d * d + d * (2 * 2 * 32) + d * d + d * 2 * hidden + hidden * d + 2 * d
    assert result["total_params"] == 2048 * d + layers * block + d
    assert result["active_params"] == result["total_params"]  # dense: every parameter is active
    assert result["tokens_per_step"] == 16 * 128
    assert result["micro_batch_per_gpu"] == 16
    assert result["fits"] is True and result["min_gpus"] == 1
    attention = layers * 12 * 4 * 32 * 128 / 2  # causal: half of T attended on average
    assert result["flops_per_token"] == pytest.approx(6 * result["total_params"] + attention)


def test_moe_plan_counts_k_of_e_experts_as_active(capsys: pytest.CaptureFixture) -> None:
    result = plan(capsys, "--devices=1")
    # tiny's MoE blocks: 8 experts of SwiGLU(192), top-2, a router of 8 x 128
    d, experts, hidden, layers = 128, 8, 192, 4
    routed = experts * (d * 2 * hidden + hidden * d)
    assert result["total_params"] - result["active_params"] == layers * routed * (experts - 2) // experts
    assert result["flops_per_token"] < 6 * result["total_params"]


def test_plan_divides_the_global_batch_over_gpus(capsys: pytest.CaptureFixture) -> None:
    assert plan(capsys, "--devices=8", "--num_nodes=2")["micro_batch_per_gpu"] == 1


def test_plan_says_when_the_batch_does_not_divide(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["plan", f"--config={TINY}", "--devices=3"])
    assert exit_.value.code == 2
    assert "global_batch_size=16 is not divisible" in capsys.readouterr().err
