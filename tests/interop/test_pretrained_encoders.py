"""Pretrained encoders: a random transformers Whisper encoder and CLIP vision tower give the kit's encoders' outputs."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from constellation_kit.errors import ConfigError
from constellation_kit.model import AudioEncoder, TimmVisionEncoder
from interop_helpers import transformers


@torch.no_grad()
def randomize(model: torch.nn.Module) -> None:
    # Random biases and LayerNorm scales too (they start at zero and one), so a misplaced one shows;
    # Whisper's position table stays its sinusoids.
    for name, param in model.named_parameters():
        if "embed_positions" not in name:
            param.normal_(0.0 if param.ndim > 1 or "bias" in name else 1.0, 0.05)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = transformers.WhisperConfig(
        num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=256,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=13, vocab_size=100,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
    )
    torch.manual_seed(0)
    model = transformers.WhisperModel(config).eval()
    randomize(model)
    directory = tmp_path_factory.mktemp("whisper")
    model.save_pretrained(directory)
    return directory


def test_a_whisper_encoder_loads_into_the_audio_encoder_with_equal_outputs(whisper_dir: Path) -> None:
    reference = transformers.WhisperModel.from_pretrained(str(whisper_dir)).get_encoder().eval()
    encoder = AudioEncoder(width=64, n_layers=2, n_heads=2, n_mels=80, init_from=str(whisper_dir)).eval()
    mel = torch.randn(3, 80, 26, generator=torch.Generator().manual_seed(1))  # 2 x max_source_positions frames
    with torch.no_grad():
        expected = reference(mel).last_hidden_state
        torch.testing.assert_close(encoder.encode_features(mel), expected, rtol=0, atol=1e-5)
    # A meta-device build materialised by reset_parameters (what FSDP2 does) ends with the same weights.
    with torch.device("meta"):
        meta = AudioEncoder(width=64, n_layers=2, n_heads=2, n_mels=80, init_from=str(whisper_dir))
    meta.to_empty(device="cpu")
    meta.reset_parameters()
    for (name, a), b in zip(encoder.state_dict().items(), meta.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_whisper_encoder_of_another_size_is_named(whisper_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"conv1\.weight has shape \[64, 80, 3\] but the encoder's conv1\.weight "
                                          r"needs \[96, 80, 3\]"):
        AudioEncoder(width=96, n_layers=2, n_heads=2, n_mels=80, init_from=str(whisper_dir))
    tensors = load_file(whisper_dir / "model.safetensors")
    tensors["encoder.embed_positions.weight"] = torch.randn_like(tensors["encoder.embed_positions.weight"])
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="not Whisper's sinusoid table"):
        AudioEncoder(width=64, n_layers=2, n_heads=2, n_mels=80, init_from=str(tmp_path))


CLIP_TIMM = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(config).eval()
    randomize(model)
    directory = tmp_path_factory.mktemp("clip")
    model.save_pretrained(directory)
    return directory


def test_a_clip_vision_tower_loads_into_a_timm_clip_vit_with_equal_outputs(clip_dir: Path) -> None:
    reference = transformers.CLIPVisionModel.from_pretrained(str(clip_dir)).eval()
    encoder = TimmVisionEncoder("vit_base_patch16_clip_quickgelu_224", weights_path=str(clip_dir),
                                backbone_kwargs=CLIP_TIMM).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = reference(pixel_values=images).last_hidden_state
        expected = reference.post_layernorm(hidden)[:, 1:]  # timm's final norm covers every token
        torch.testing.assert_close(encoder(images), expected, rtol=0, atol=1e-5)


def test_a_backbone_that_is_not_clip_shaped_is_refused(clip_dir: Path) -> None:
    with pytest.raises(ConfigError, match="patch-embedding bias, CLIP has none"):
        TimmVisionEncoder("vit_tiny_patch16_224", weights_path=str(clip_dir), backbone_kwargs=CLIP_TIMM)
    with pytest.raises(ConfigError, match=r"has shape \[17, 64\].*pos_embed needs \[1, 65, 64\]|has shape \[1, 17, 64\]"):
        TimmVisionEncoder("vit_base_patch16_clip_quickgelu_224", weights_path=str(clip_dir),
                          backbone_kwargs={**CLIP_TIMM, "img_size": 64})
