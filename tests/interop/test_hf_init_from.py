"""Import: a transformers checkpoint becomes the kit network computing the same function, and trains from there."""

import json
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from constellation_kit.errors import ConfigError
from constellation_kit.interop import export_network, load_pretrained
from constellation_kit.train import LanguageModel
from conftest import free_port
from interop_fsdp2 import TOKENS, VOCAB, mixtral_network, sharded_start
from interop_helpers import kit_logits, recipe_network, small_network, transformers

@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random transformers Mixtral saved by save_pretrained (per-expert w1/w2/w3 on disk, as released ones)."""
    config = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=96, intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
    )
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(1.0, 0.2)  # not all ones, so a misplaced norm shows
    directory = tmp_path_factory.mktemp("mixtral")
    model.save_pretrained(directory)
    return directory


def hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def test_a_random_mixtral_imports_with_equal_logits(mixtral_dir: Path) -> None:
    network = mixtral_network().eval()
    load_pretrained(network, mixtral_dir)
    torch.testing.assert_close(kit_logits(network, TOKENS), hf_logits(mixtral_dir, TOKENS), rtol=0, atol=1e-5)
    assert not network.token_embedding.weight[VOCAB:].any()  # padding rows: zero, never a target


class Batches(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = TOKENS[index % 2]
        return {"tokens": row[:-1], "targets": row[1:], "document_ids": torch.zeros(len(row) - 1, dtype=torch.long)}


class FirstLoss(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.loss = float(outputs["loss"])


def test_init_from_in_the_module_starts_training_from_the_checkpoint(mixtral_dir: Path) -> None:
    module = LanguageModel(lambda vocab: mixtral_network(vocab), vocab_size=VOCAB, init_from=str(mixtral_dir),
                           optimizer=partial(torch.optim.SGD, lr=0.1))
    first = FirstLoss()
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[first])
    trainer.fit(module, DataLoader(Batches(), batch_size=2))
    logits = hf_logits(mixtral_dir, TOKENS[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), TOKENS[:, 1:].flatten())
    assert first.loss == pytest.approx(float(expected), abs=1e-5)  # the step ran on the imported weights
    q_proj = load_file(mixtral_dir / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(module.network.blocks[0].attention.q_proj.weight, q_proj)  # and moved them


@pytest.mark.parametrize(
    "make", [lambda: small_network(), lambda: small_network(qk_norm=True, layer_pattern="LG", moe_every=2, n_layers=4)],
    ids=["mixtral", "mellum"],
)
def test_kit_to_transformers_to_kit_is_bitwise(make, tmp_path: Path) -> None:
    torch.manual_seed(1)
    original = make()
    export_network(original, tmp_path, max_shard_bytes=100_000)  # sharded on the way
    assert (tmp_path / "model.safetensors.index.json").is_file()
    torch.manual_seed(2)
    back = make()
    load_pretrained(back, tmp_path)
    for (name, a), b in zip(original.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_config_that_differs_names_each_setting(mixtral_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"num_key_value_heads: checkpoint 2, network 3; intermediate_size: "
                                          r"checkpoint 40, network 48"):
        load_pretrained(mixtral_network(n_kv_heads=3, expert_hidden=48), mixtral_dir)
    with pytest.raises(ConfigError, match="the network has qk_norm: Mixtral has no QK-norm"):
        load_pretrained(small_network(qk_norm=True), mixtral_dir)


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(mixtral_dir: Path, tmp_path: Path) -> None:
    tensors = load_file(mixtral_dir / "model.safetensors")
    tensors["model.layers.1.self_attn.o_proj.weight"] = torch.zeros(96, 90)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((mixtral_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"tensor model\.layers\.1\.self_attn\.o_proj\.weight has shape \[96, 90\] "
                                          r".* needs \[96, 96\]"):
        load_pretrained(mixtral_network(), tmp_path)
    tensors["model.layers.1.self_attn.o_proj.weight"] = torch.zeros(96, 96)
    del tensors["model.layers.2.block_sparse_moe.experts.3.w2.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"tensor 'model\.layers\.2\.block_sparse_moe\.experts\.3\.w2\.weight' "
                                          "is not in the checkpoint"):
        load_pretrained(mixtral_network(), tmp_path)
    config = json.loads((mixtral_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="model_type 'gpt2' has no mapping.*supported: llama, mellum, mixtral"):
        load_pretrained(mixtral_network(), tmp_path)


def test_two_fsdp2_ranks_start_from_the_checkpoint_with_the_single_process_loss(mixtral_dir: Path) -> None:
    single = mixtral_network().eval()
    load_pretrained(single, mixtral_dir)
    with torch.no_grad():
        loss = F.cross_entropy(kit_logits(single, TOKENS[:, :-1]).flatten(0, 1), TOKENS[:, 1:].flatten())
    mp.spawn(sharded_start, args=(2, free_port(), str(mixtral_dir), float(loss)), nprocs=2, join=True)


def test_the_recipe_written_from_a_checkpoint_builds_its_network(mixtral_dir: Path, tmp_path: Path) -> None:
    import yaml

    from constellation_kit.interop.recipe import network_section

    recipe = tmp_path / "mixtral.yaml"
    recipe.write_text(yaml.safe_dump(network_section(mixtral_dir)))
    network = recipe_network(f"--config={recipe}", vocab=VOCAB)
    load_pretrained(network, mixtral_dir)
    torch.testing.assert_close(kit_logits(network.eval(), TOKENS), hf_logits(mixtral_dir, TOKENS), rtol=0, atol=1e-5)
    # And a Mellum-class checkpoint (per-layer kinds, dense and MoE blocks) round-trips through its recipe.
    export_network(small_network(qk_norm=True, layer_pattern="LG", moe_every=2, n_layers=4), tmp_path / "mellum")
    (tmp_path / "mellum.yaml").write_text(yaml.safe_dump(network_section(tmp_path / "mellum")))
    load_pretrained(recipe_network(f"--config={tmp_path / 'mellum.yaml'}", vocab=320), tmp_path / "mellum")


def test_the_module_checks_init_from_before_any_setup(mixtral_dir: Path) -> None:
    module = LanguageModel(lambda vocab: mixtral_network(vocab, n_kv_heads=3), vocab_size=VOCAB,
                           init_from=str(mixtral_dir))
    with pytest.raises(ConfigError, match="num_key_value_heads: checkpoint 2, network 3"):
        module.check_config()  # what the CLI calls right after parsing, on a meta-device network
