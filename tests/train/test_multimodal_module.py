"""The multimodal LightningModule: where gradients go, the alignment loss, the grounding score."""

from functools import partial

import pytest
import torch

from constellation_kit.errors import ConfigError
from constellation_kit.model import AudioEncoder, GroupedQueryAttention, MLPProjector, TimmVisionEncoder, Transformer
from constellation_kit.train import InfoNCEAlignment, MultimodalLanguageModel

VOCAB, IMAGE_ID, AUDIO_ID = 40, 1, 2
TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


def make_model(freeze_vision: bool = False, vision_tokens: int = 4, **kwargs) -> MultimodalLanguageModel:
    model = MultimodalLanguageModel(
        network=partial(Transformer, d_model=32, n_layers=1, attention=partial(GroupedQueryAttention, n_heads=2)),
        vocab_size=VOCAB,
        vision_encoder=partial(TimmVisionEncoder, num_tokens=vision_tokens, backbone_kwargs=TINY_VIT),
        audio_encoder=partial(AudioEncoder, width=16, n_layers=1, n_heads=2, num_tokens=3),
        vision_projector=partial(MLPProjector, hidden_dim=24),
        freeze_vision_encoder=freeze_vision,
        **kwargs,
    )
    model.configure_model()
    return model


def make_batch() -> dict[str, torch.Tensor]:
    """Two rows: row 0 holds an image item then an audio item, row 1 another image item and text."""
    rows = [
        [IMAGE_ID] * 4 + [5, 6, 0] + [AUDIO_ID] * 3 + [7, 8, 0] + [0] * 2,
        [9, 10, 11, 0] + [IMAGE_ID] * 4 + [12, 13, 14, 0] + [0] * 3,
    ]
    tokens = torch.tensor(rows)
    targets = torch.roll(tokens, -1, dims=1)
    targets[(targets == IMAGE_ID) | (targets == AUDIO_ID)] = -100
    image_caption = torch.full_like(tokens, -1)
    image_caption[0, 4:7], image_caption[1, 8:12] = 0, 1
    audio_caption = torch.full_like(tokens, -1)
    audio_caption[0, 10:13] = 0
    return {
        "tokens": tokens, "targets": targets, "document_ids": torch.zeros_like(tokens),
        "image": torch.randn(2, 3, 32, 32), "image_mask": tokens == IMAGE_ID, "image_caption": image_caption,
        "audio": torch.randn(1, 1600), "audio_mask": tokens == AUDIO_ID, "audio_caption": audio_caption,
    }


def test_gradients_reach_projectors_but_not_a_frozen_encoder() -> None:
    model = make_model(freeze_vision=True)
    model.train()
    model._loss(make_batch())[0].backward()
    vision, audio = model.encoders["image"], model.encoders["audio"]
    assert all(p.grad is None and not p.requires_grad for p in vision.parameters())
    assert not vision.training  # a frozen encoder stays in eval mode
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projectors["image"].parameters())
    assert all(p.grad is not None for p in model.projectors["audio"].parameters())
    assert model.encoders["audio"].conv1.weight.grad.abs().sum() > 0  # the unfrozen one trains
    optimizer = model.configure_optimizers()  # no scheduler: the optimizer alone
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.projectors["image"][0].weight) in optimized and id(audio.conv1.weight) in optimized
    assert id(vision.backbone.patch_embed.proj.weight) not in optimized


def test_encoder_output_lands_on_the_placeholders() -> None:
    model = make_model()
    batch = make_batch()
    embeddings = model.input_embeddings(batch)
    with torch.no_grad():
        image = model.projectors["image"](model.encoders["image"](batch["image"]))  # (2, 4, 32)
    torch.testing.assert_close(embeddings[0, :4], image[0])
    torch.testing.assert_close(embeddings[1, 4:8], image[1])
    torch.testing.assert_close(embeddings[1, :4], model.network.embed(batch["tokens"][1, :4]))


def test_placeholder_count_mismatch_names_both_numbers() -> None:
    model = make_model(vision_tokens=2)  # the data laid out 4 placeholders per image
    with pytest.raises(ConfigError, match=r"8 image placeholder tokens .* produced 4 embeddings \(2 items x 2 tokens\)"):
        model._loss(make_batch())


def test_alignment_loss_is_added_with_its_weight() -> None:
    torch.manual_seed(0)
    plain = make_model()
    torch.manual_seed(0)
    aligned = make_model(alignment_loss=InfoNCEAlignment(temperature=0.1), alignment_weight=0.5)
    batch = make_batch()
    difference = aligned._loss(batch)[0] - plain._loss(batch)[0]
    # Only the image pair set has two items (the audio one, a single pair, contributes zero).
    embeddings = aligned.network.embed(batch["tokens"])
    media = aligned.projectors["image"](aligned.encoders["image"](batch["image"])).mean(dim=1)
    text = torch.stack([embeddings[0, 4:7].mean(0), embeddings[1, 8:12].mean(0)])
    expected = 0.5 * (InfoNCEAlignment(0.1)(media, text) + 0.0) / 2
    torch.testing.assert_close(difference, expected, rtol=1e-4, atol=1e-5)


def test_training_on_cpu_puts_only_scored_positions_through_the_head() -> None:
    # The placeholders' targets are ignored: their logits are never computed in training, and the
    # loss and every gradient equal the full-logits cross-entropy's.
    torch.manual_seed(0)
    model = make_model().train()
    batch = make_batch()
    assert (batch["targets"] == -100).any()
    loss, _, logits = model._loss(batch, logits_needed=False)
    assert logits is None
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    full = model.network.logits(model._network_output(batch).hidden)  # (B, T, V)
    reference = torch.nn.functional.cross_entropy(full.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, reference)
    expected = torch.autograd.grad(reference, list(model.parameters()), allow_unused=True)
    for name, got, want in zip([n for n, _ in model.named_parameters()], grads, expected):
        assert (got is None) == (want is None), name
        if got is not None:
            torch.testing.assert_close(got, want, msg=name)


def test_infonce_prefers_matched_pairs() -> None:
    loss = InfoNCEAlignment(temperature=0.1)
    x = torch.randn(6, 8)
    assert loss(x, x) < loss(x, x.roll(1, dims=0))
    torch.testing.assert_close(loss(x, x * 3.0), loss(x, x))  # L2-normalised: scale-free


def test_caption_choice_picks_the_most_likely_candidate() -> None:
    model = make_model()
    model.eval()
    # One image item, three candidate rows; the reference scores each by hand.
    tokens = torch.tensor([[IMAGE_ID] * 4 + [5, 6, 0], [IMAGE_ID] * 4 + [7, 8, 0], [IMAGE_ID] * 4 + [9, 10, 0]])
    targets = torch.full_like(tokens, -100)
    targets[:, 3:6] = tokens[:, 4:7]
    batch = {
        "tokens": tokens, "targets": targets, "document_ids": torch.zeros_like(tokens),
        "image": torch.randn(1, 3, 32, 32), "image_mask": tokens == IMAGE_ID,
        "audio": torch.zeros(0, 1600), "audio_mask": torch.zeros_like(tokens, dtype=torch.bool),
        "num_choices": 3,
    }
    logits = model(tokens, None, model.input_embeddings(batch))
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    scores = (log_probs * (targets >= 0)).sum(dim=1)
    for answer in range(3):
        batch["answer"] = torch.tensor([answer])
        assert bool(model.caption_choices_correct(batch)[0]) == (scores.argmax().item() == answer)


def test_meta_device_check_builds_everything() -> None:
    model = MultimodalLanguageModel(
        network=partial(Transformer, d_model=32, n_layers=1, attention=partial(GroupedQueryAttention, n_heads=2)), vocab_size=VOCAB,
        vision_encoder=partial(TimmVisionEncoder, backbone_kwargs=TINY_VIT),
        audio_encoder=partial(AudioEncoder, width=30, n_heads=4),
    )
    with pytest.raises(ConfigError, match="width=30"):
        model.check_config()
