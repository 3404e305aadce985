"""Shapes through the vision and audio encoders and the projectors; meta-device construction."""

import pytest
import torch

from constellation_kit.errors import ConfigError
from constellation_kit.model import AudioEncoder, LinearProjector, MLPProjector, TimmVisionEncoder
from constellation_kit.model.pooling import pool_tokens

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.mark.parametrize("num_tokens, expected", [(None, 16), (4, 4), (3, 3)])
def test_vit_patch_tokens_drop_the_class_token_and_pool(num_tokens: int | None, expected: int) -> None:
    encoder = TimmVisionEncoder("vit_tiny_patch16_224", num_tokens=num_tokens, backbone_kwargs=TINY_VIT)
    assert encoder.num_prefix_tokens == 1
    out = encoder(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, expected, 32)
    if num_tokens is None:  # exactly the patch tokens of forward_features, class token removed
        features = encoder.backbone.forward_features(torch.ones(1, 3, 32, 32))
        torch.testing.assert_close(encoder(torch.ones(1, 3, 32, 32)), features[:, 1:])


def test_2d_pooling_keeps_image_quadrants_apart() -> None:
    encoder = TimmVisionEncoder("vit_tiny_patch16_224", num_tokens=4, backbone_kwargs=TINY_VIT)
    patches = encoder.backbone.forward_features(torch.randn(1, 3, 32, 32))[:, 1:]  # (1, 16, D), 4x4 grid
    grid = patches.view(1, 4, 4, -1)
    top_left = grid[:, :2, :2].mean(dim=(1, 2))
    torch.testing.assert_close(pool_tokens(patches, 4, (4, 4))[:, 0], top_left)


def test_cnn_backbone_feature_map_becomes_tokens() -> None:
    encoder = TimmVisionEncoder("resnet10t", num_tokens=None)
    out = encoder(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 4, encoder.out_dim)  # stride 32: a 2x2 map


def test_unknown_backbone_and_missing_weights_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not_a_model"):
        TimmVisionEncoder("not_a_model")
    with pytest.raises(ConfigError, match="does not exist"):
        TimmVisionEncoder("vit_tiny_patch16_224", weights_path=str(tmp_path / "none.pt"), backbone_kwargs=TINY_VIT)


def test_local_weights_load_and_survive_meta_construction(tmp_path) -> None:
    source = TimmVisionEncoder("vit_tiny_patch16_224", backbone_kwargs=TINY_VIT)
    path = tmp_path / "vit.pt"
    torch.save(source.backbone.state_dict(), path)
    with torch.device("meta"):
        encoder = TimmVisionEncoder("vit_tiny_patch16_224", weights_path=str(path), backbone_kwargs=TINY_VIT)
    encoder.to_empty(device="cpu")
    encoder.reset_parameters()
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(encoder(images), source(images))


@pytest.mark.parametrize("num_tokens, expected", [(None, 13), (4, 4)])
def test_audio_encoder_shapes(num_tokens: int | None, expected: int) -> None:
    encoder = AudioEncoder(width=32, n_layers=1, n_heads=2, n_mels=80, num_tokens=num_tokens)
    # 0.25 s: 25 frames after Whisper drops the last, ceil(25 / 2) = 13 after the stride-2 conv.
    assert encoder(torch.randn(3, 4000)).shape == (3, expected, 32)


def test_audio_encoder_builds_on_meta_and_initialises_after_to_empty() -> None:
    reference = AudioEncoder(width=32, n_layers=1, n_heads=2)
    with torch.device("meta"):
        encoder = AudioEncoder(width=32, n_layers=1, n_heads=2)
    encoder.to_empty(device="cpu")
    encoder.reset_parameters()
    torch.testing.assert_close(encoder.front_end.mel.mel_scale.fb, reference.front_end.mel.mel_scale.fb)
    torch.testing.assert_close(encoder.front_end.mel.spectrogram.window, reference.front_end.mel.spectrogram.window)
    assert torch.isfinite(encoder(torch.randn(1, 1600))).all()


def test_audio_encoder_rejects_indivisible_heads() -> None:
    with pytest.raises(ConfigError, match="width=30"):
        AudioEncoder(width=30, n_heads=4)


@pytest.mark.parametrize("projector", [MLPProjector(24, 64), MLPProjector(24, 64, hidden_dim=16), LinearProjector(24, 64)])
def test_projectors_map_to_the_model_width(projector: torch.nn.Module) -> None:
    assert projector(torch.randn(2, 5, 24)).shape == (2, 5, 64)
    projector.reset_parameters()  # owns its parameters: meta construction + to_empty needs this
