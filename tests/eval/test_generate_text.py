"""Text generation from the tiny run's checkpoint: media prepared as validation prepares it, stop strings, seeds."""

from types import SimpleNamespace

import pytest
import torch

from constellation_kit.data.media_rows import item_tokens
from constellation_kit.data.multimodal_datamodule import PLACEHOLDERS
from constellation_kit.errors import ConfigError
from constellation_kit.eval.generation import generate_text
from constellation_kit.eval.media_inputs import MediaInputs
from constellation_kit.model.kv_cache import KVCache
from constellation_kit.train import moe_terms
from constellation_kit.trained_model import load_trained_model
from conftest import last_checkpoint


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_trained_model(last_checkpoint(tiny_run[0]))


def media_item(cli, modality: str):
    return next(item for item in cli.datamodule.items if item.modality == modality)


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_a_file_becomes_what_validation_feeds_the_encoder(tiny_run, trained, modality: str) -> None:
    cli, _ = tiny_run
    item = media_item(cli, modality)
    inputs = MediaInputs(trained.module, trained.datamodule, trained.tokenizer)
    # The run's own data module, set up for training, decoding the same file for validation.
    expected = cli.datamodule._loaders(training=False)[modality](item)
    assert torch.equal(inputs.load(modality, item.path), expected)
    # The placeholders are those a training item starts with.
    placeholders = inputs.placeholders(modality)
    dm = cli.datamodule
    caption = trained.tokenizer.encode(item.text, add_special_tokens=False).ids
    training_item = item_tokens(dm.placeholder_ids[modality], dm.num_placeholders[modality], caption, dm.eos_id, dm.seq_len + 1)
    assert placeholders == training_item[: len(placeholders)]
    assert len(placeholders) == cli.datamodule.num_placeholders[modality]
    assert set(placeholders) == {trained.tokenizer.token_to_id(PLACEHOLDERS[modality])}


def test_the_tiny_checkpoint_continues_text_an_image_and_a_sound(tiny_run, trained) -> None:
    cli, _ = tiny_run
    image, audio = media_item(cli, "image"), media_item(cli, "audio")
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        encoder.register_forward_hook(lambda module, args, out, m=modality: seen.__setitem__(m, args[0]))
        for modality, encoder in trained.module.encoders.items()
    ]
    try:
        texts = generate_text(trained, ["def main():", "A picture of", "The sound of"], max_new_tokens=6,
                              images=[None, image.path, None], audio=[None, None, audio.path])
    finally:
        for hook in hooks:
            hook.remove()
    assert all(isinstance(t, str) and t for t in texts)
    inputs = MediaInputs(trained.module, trained.datamodule, trained.tokenizer)
    # Each file reached its encoder once, in the prompt's forward pass, as validation prepares it.
    assert torch.equal(seen["image"], inputs.load("image", image.path)[None])
    assert torch.equal(seen["audio"], inputs.load("audio", audio.path)[None])


def test_stop_strings_cut_the_text_where_they_first_occur(trained) -> None:
    (free,) = generate_text(trained, ["import os\n"], max_new_tokens=20)
    assert len(free) >= 6
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    (cut,) = generate_text(trained, ["import os\n"], max_new_tokens=20, stop=["\x00never", stop])
    assert cut == free[: free.find(stop)]
    # "" (what <|endoftext|> decodes to, special tokens skipped) matches everywhere: ignored, not a cut at 0.
    assert generate_text(trained, ["import os\n"], max_new_tokens=20, stop=[""]) == [free]


def test_seeded_sampling_repeats(trained) -> None:
    options = dict(max_new_tokens=5, temperature=1.0, top_k=50, top_p=0.95)
    first = generate_text(trained, ["def", ""], seed=5, **options)  # "": a new document, after <|endoftext|>
    assert generate_text(trained, ["def", ""], seed=5, **options) == first
    assert generate_text(trained, ["def", ""], seed=6, **options) != first


def test_router_telemetry_survives_a_one_token_step(trained) -> None:
    network = trained.module.network
    cache = KVCache()
    tokens = torch.tensor([trained.tokenizer.encode("def main():").ids])
    with torch.no_grad():
        network(tokens, cache=cache)
        step = network(tokens[:, -1:], cache=cache)
    routing = moe_terms.routing_layers(step.aux)
    assert len(routing) == network.n_layers  # every tiny block is MoE
    assert all(int(r.tokens_per_expert_E.sum()) == r.experts_TK.shape[1] for _, r in routing)  # one token, k copies
    metrics = moe_terms.telemetry(routing)
    assert metrics and all(torch.isfinite(v).all() for v in metrics.values())


def test_bad_requests_are_named(tiny_run, trained, tmp_path) -> None:
    with pytest.raises(ConfigError, match="1 image entries for 2 prompts"):
        generate_text(trained, ["a", "b"], max_new_tokens=2, images=[None])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    with pytest.raises(ConfigError, match="broken.png as the prompt's image: corrupt"):
        generate_text(trained, ["a"], max_new_tokens=2, images=[str(broken)])
    text_only = MediaInputs(SimpleNamespace(), trained.datamodule, trained.tokenizer)
    with pytest.raises(ConfigError, match="no vision_encoder"):
        text_only.placeholders("image")
