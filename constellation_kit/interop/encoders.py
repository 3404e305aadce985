"""Pretrained encoders: a transformers Whisper encoder into the kit's ``AudioEncoder``, a CLIP vision tower
into a timm CLIP ViT (the kit's ``TimmVisionEncoder``).

**Whisper** (Radford et al. 2022): :class:`~constellation_kit.model.AudioEncoder` already has its
shape (two GELU convolutions, fixed sinusoidal positions, pre-norm blocks, a final LayerNorm), and
its log-mel front end is Whisper's (log10, an 80 dB floor, ``(x + 4) / 4``). The fused ``qkv``
takes ``[q_proj; k_proj; v_proj]``, with a zero key bias (Whisper's ``k_proj`` has none, and a
bias on the keys shifts every logit of a query equally, so it never mattered). Whisper stores its
positions as a frozen table that its initialiser fills with the same sinusoids the kit computes;
a table that is not those sinusoids has no place in the kit, and is refused.

**CLIP** (Radford et al. 2021): timm's ``vit_*_clip_quickgelu_*`` models are CLIP's vision tower
(a LayerNorm before the blocks, QuickGELU, LayerNorm eps 1e-5, a class token whose position is
embedded; no patch-embedding bias). ``q/k/v_proj`` fuse into ``attn.qkv``, ``pre_layrnorm`` is
``norm_pre`` and ``post_layernorm`` is the final ``norm``: timm applies it to every token, so the
encoder's patch tokens are ``post_layernorm(last_hidden_state)[:, 1:]`` (transformers applies it
to the pooled class token only).

Both read ``model.safetensors`` (or a sharded index) from a local directory, whichever model class
saved it (``WhisperForConditionalGeneration``, ``WhisperModel``, ``CLIPModel``, ``CLIPVisionModel``).
"""

import json
from pathlib import Path

import torch
from torch import nn

from constellation_kit.errors import ConfigError
from constellation_kit.interop.safetensors_io import SafetensorsReader
from constellation_kit.model.audio_encoder import AudioEncoder, sinusoids


def _prefix(reader: SafetensorsReader, probe: str, candidates: tuple[str, ...], what: str) -> str:
    names = set(reader.names())
    for prefix in candidates:
        if prefix + probe in names:
            return prefix
    raise ConfigError(f"{reader.directory} holds no {what} (looked for {[c + probe for c in candidates]})")


def _copy(target: dict[str, torch.Tensor], name: str, value: torch.Tensor, source: str) -> None:
    if tuple(target[name].shape) != tuple(value.shape):
        raise ConfigError(f"tensor {source} has shape {list(value.shape)} but the encoder's {name} needs "
                          f"{list(target[name].shape)}: make the encoder's sizes match the checkpoint's config.json")
    target[name] = value.to(target[name].dtype)


def whisper_encoder_state(directory: str | Path, encoder: AudioEncoder) -> dict[str, torch.Tensor]:
    """The ``AudioEncoder`` state dict holding a transformers Whisper checkpoint's encoder (shapes checked)."""
    reader = SafetensorsReader(directory)
    p = _prefix(reader, "conv1.weight", ("model.encoder.", "encoder.", ""), "Whisper encoder (conv1.weight)")
    state = {name: tensor.clone() for name, tensor in encoder.state_dict().items()}

    def take(kit: str, hf: str) -> None:
        _copy(state, kit, reader.read(p + hf), p + hf)

    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        take(name, name)
    take("final_norm.weight", "layer_norm.weight")
    take("final_norm.bias", "layer_norm.bias")
    for i in range(len(encoder.blocks)):
        kit, hf = f"blocks.{i}.", f"{p}layers.{i}."
        if hf + "self_attn.q_proj.weight" not in reader.files:
            raise ConfigError(f"{directory} has no encoder layer {i}: the encoder has {len(encoder.blocks)} layers")
        q, k, v = (reader.read(f"{hf}self_attn.{x}_proj.weight") for x in "qkv")
        _copy(state, kit + "qkv.weight", torch.cat([q, k, v]), hf + "self_attn.{q,k,v}_proj.weight")
        q_bias, v_bias = reader.read(hf + "self_attn.q_proj.bias"), reader.read(hf + "self_attn.v_proj.bias")
        _copy(state, kit + "qkv.bias", torch.cat([q_bias, torch.zeros_like(q_bias), v_bias]), hf + "self_attn.q/v_proj.bias")
        for kit_name, hf_name in [("out", "self_attn.out_proj"), ("attention_norm", "self_attn_layer_norm"),
                                  ("mlp_norm", "final_layer_norm"), ("mlp.0", "fc1"), ("mlp.2", "fc2")]:
            for kind in ("weight", "bias"):
                _copy(state, f"{kit}{kit_name}.{kind}", reader.read(f"{hf}{hf_name}.{kind}"), f"{hf}{hf_name}.{kind}")
    extra_layer = f"{p}layers.{len(encoder.blocks)}.self_attn.q_proj.weight"
    if extra_layer in reader.files:
        raise ConfigError(f"{directory}'s encoder has more than the encoder's {len(encoder.blocks)} layers")
    positions = reader.read(p + "embed_positions.weight").float()
    expected = sinusoids(positions.shape[0], positions.shape[1], positions.device)
    if not torch.allclose(positions, expected, atol=1e-3):
        raise ConfigError(f"{p}embed_positions.weight in {directory} is not Whisper's sinusoid table: the kit's "
                          "AudioEncoder computes those sinusoids and has no learned positions to hold it")
    return state


@torch.no_grad()
def load_whisper_encoder(encoder: AudioEncoder, directory: str | Path) -> None:
    """Load a transformers Whisper checkpoint's encoder into ``encoder`` (sizes must match; named otherwise)."""
    config_path = Path(directory) / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if config.get("activation_function", "gelu") != "gelu":
            raise ConfigError(f"{directory}: activation_function={config['activation_function']!r}; "
                              "the AudioEncoder's MLP uses exact GELU, as Whisper does")
    encoder.load_state_dict(whisper_encoder_state(directory, encoder))


def clip_vision_to_timm(directory: str | Path, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """A timm CLIP ViT state dict (for ``backbone``, shapes checked) from a transformers CLIP vision tower."""
    reader = SafetensorsReader(directory)
    p = _prefix(reader, "embeddings.class_embedding", ("vision_model.", ""), "CLIP vision tower")
    state = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}
    if "patch_embed.proj.bias" in state:
        raise ConfigError("the timm backbone has a patch-embedding bias, CLIP has none: use a vit_*_clip_* model "
                          "(pre_norm=True), e.g. vit_base_patch16_clip_quickgelu_224")
    for required in ("norm_pre.weight", "norm.weight", "cls_token"):
        if required not in state:
            raise ConfigError(f"the timm backbone has no {required}: CLIP needs a class token, a pre-norm and a final "
                              "norm; use a vit_*_clip_quickgelu_* model")

    def take(kit: str, hf: str, transform=lambda t: t) -> None:
        _copy(state, kit, transform(reader.read(p + hf)), p + hf)

    take("cls_token", "embeddings.class_embedding", lambda t: t.view(1, 1, -1))
    take("pos_embed", "embeddings.position_embedding.weight", lambda t: t.unsqueeze(0))
    take("patch_embed.proj.weight", "embeddings.patch_embedding.weight")
    for kit, hf in [("norm_pre", "pre_layrnorm"), ("norm", "post_layernorm")]:
        take(f"{kit}.weight", f"{hf}.weight")
        take(f"{kit}.bias", f"{hf}.bias")
    depth = sum(1 for name in state if name.endswith(".attn.qkv.weight"))
    for i in range(depth):
        kit, hf = f"blocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = torch.cat([reader.read(f"{p}{hf}self_attn.{x}_proj.{kind}") for x in "qkv"])
            _copy(state, f"{kit}attn.qkv.{kind}", qkv, f"{p}{hf}self_attn.{{q,k,v}}_proj.{kind}")
            for kit_name, hf_name in [("attn.proj", "self_attn.out_proj"), ("norm1", "layer_norm1"),
                                      ("norm2", "layer_norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]:
                take(f"{kit}{kit_name}.{kind}", f"{hf}{hf_name}.{kind}")
    if f"{p}encoder.layers.{depth}.layer_norm1.weight" in reader.files:
        raise ConfigError(f"{directory}'s vision tower has more than the backbone's {depth} blocks")
    return state
