import json

import pytest
import torch

from constellation_kit.cli import main
from constellation_kit.model import AudioEncoder, MLPProjector, TimmVisionEncoder
from conftest import REPO, TINY, XL, variant_base

TEXT_ONLY = f"--config={REPO / 'recipes' / 'variants' / 'text-only.yaml'}"
RECIPES = [[f"--config={p}"] for p in sorted((REPO / "recipes").glob("*.yaml")) if p.name != "base.yaml"] + [
    [f"--config={variant_base(variant)}", f"--config={variant}"] for variant in sorted((REPO / "recipes" / "variants").glob("*.yaml"))
]


def plan(capsys: pytest.CaptureFixture, *args: str, recipe: str = TINY) -> dict:
    main(["plan", f"--config={recipe}", "--json=true", *args])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("configs", RECIPES, ids=lambda c: "+".join(a.rsplit("/", 1)[-1] for a in c))
def test_plan_runs_on_every_recipe(configs: list[str], capsys: pytest.CaptureFixture) -> None:
    main(["plan", *configs, "--json=true"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < result["active_params"] <= result["total_params"]
    assert result["tokens_per_step"] == result["global_batch_size"] * result["seq_len"]
    assert result["memory_per_gpu_gib"] == pytest.approx(sum(result["memory_breakdown_gib"].values()), abs=0.05)


def test_plan_counts_the_recipe_model_and_batch(capsys: pytest.CaptureFixture) -> None:
    result = plan(capsys, "--devices=1", f"--config={REPO / 'recipes' / 'variants' / 'dense.yaml'}", TEXT_ONLY)
    # tiny, dense, no encoders: 2048-token vocabulary (tied), d_model 128, 3 blocks of GQA (4 heads, 2 KV) + SwiGLU(256)
    d, hidden, layers = 128, 256, 3
    block = d * d + d * (2 * 2 * 32) + d * d + d * 2 * hidden + hidden * d + 2 * d
    assert result["total_params"] == 2048 * d + layers * block + d
    assert result["active_params"] == result["total_params"]  # dense: every parameter is active
    assert result["tokens_per_step"] == 16 * 128
    assert result["micro_batch_per_gpu"] == 16
    assert result["fits"] is True and result["min_gpus"] == 1
    attention = layers * 12 * 4 * 32 * 128 / 2  # causal: half of T attended on average
    assert result["flops_per_token"] == pytest.approx(6 * result["total_params"] + attention)


def test_moe_plan_counts_k_of_e_experts_as_active(capsys: pytest.CaptureFixture) -> None:
    result = plan(capsys, "--devices=1", TEXT_ONLY)
    # tiny's MoE blocks: 8 experts of SwiGLU(128), top-2, a router of 8 x 128
    d, experts, hidden, layers = 128, 8, 128, 3
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


def test_plan_counts_the_media_encoders_in_the_total_but_not_per_token(capsys: pytest.CaptureFixture) -> None:
    with_media, text_only = plan(capsys, "--devices=1"), plan(capsys, "--devices=1", TEXT_ONLY)
    # tiny's encoders and projectors, built directly with the recipe's arguments
    vision = TimmVisionEncoder("vit_tiny_patch16_224", 16, backbone_kwargs=dict(img_size=32, patch_size=8, depth=2,
                                                                               embed_dim=64, num_heads=2))
    audio = AudioEncoder(width=64, n_layers=2, n_heads=2, n_mels=80, num_tokens=4)
    modules = [vision, audio, MLPProjector(vision.out_dim, 128), MLPProjector(audio.out_dim, 128)]
    expected = sum(p.numel() for m in modules for p in m.parameters())
    assert with_media["encoder_params"] == expected and text_only["encoder_params"] == 0
    assert with_media["total_params"] == text_only["total_params"] + expected
    assert with_media["active_params"] == text_only["active_params"]  # encoders run per item, not per token


def test_xl_plan_is_mixtral_8x7b_class_and_fits_on_its_cluster(capsys: pytest.CaptureFixture) -> None:
    result = plan(capsys, TEXT_ONLY, recipe=XL)  # the recipe's own 64 nodes x 8 GPUs
    # 32 blocks of d=4096: attention q,o 4096^2 + k,v 4096 x 1024 (8 of 32 heads), QK-norm 2 x 128,
    # two RMSNorms, a router of 8 x 4096, 8 SwiGLU experts of 3 x 4096 x 14336; untied 32768-token
    # embedding and head; a final norm.
    d, kv, hd, experts, hidden, vocab, layers = 4096, 1024, 128, 8, 14336, 32768, 32
    attention = 2 * d * d + 2 * d * kv + 2 * hd
    expert = 3 * d * hidden
    block = attention + 2 * d + experts * d + experts * expert
    assert result["total_params"] == layers * block + 2 * vocab * d + d  # 46.7 B, Mixtral 8x7B's 46.7 B
    assert result["active_params"] == result["total_params"] - layers * (experts - 2) * expert  # 12.9 B
    assert result["num_gpus"] == 512 and result["micro_batch_per_gpu"] == 1
    assert result["tokens_per_step"] == 8192 * 8192
    assert result["fits"] is True and result["min_gpus"] <= 512
