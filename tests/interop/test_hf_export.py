"""Export: transformers loads what the kit writes and computes the same function (logits and greedy tokens)."""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from lightning.fabric.utilities.load import _METADATA_FILENAME
from safetensors import safe_open

from constellation_kit.cli import main
from constellation_kit.errors import ConfigError
from constellation_kit.interop import export_checkpoint, export_network
from constellation_kit.trained_model import load_trained_model
from conftest import REPO, last_checkpoint
from interop_helpers import assert_same_function, hf_greedy, kit_greedy, load_hf, recipe_network, small_network, transformers


def safetensors_of(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


@pytest.mark.slow
def test_the_tiny_run_exports_to_mixtral_and_transformers_computes_the_same(tiny_run, tmp_path: Path) -> None:
    cli, _ = tiny_run
    output = tmp_path / "exported"
    main(["export", f"--ckpt_path={last_checkpoint(cli)}", f"--output={output}"])
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in output.iterdir()}
    trained = load_trained_model(last_checkpoint(cli))
    model = load_hf(output)
    assert type(model).__name__ == "MixtralForCausalLM"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(output))
    text = "import os\nprint(os.getcwd())"
    tokens = tokenizer(text, return_tensors="pt").input_ids
    assert tokens[0].tolist() == trained.tokenizer.encode(text).ids
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, trained.module(tokens), rtol=0, atol=1e-5)
    assert torch.equal(hf_greedy(model, tokens, 8), kit_greedy(trained.module.network, tokens, 8))


@pytest.mark.slow
def test_a_sharded_checkpoint_exports_tensor_by_tensor_to_the_same_weights(tiny_run, tmp_path: Path) -> None:
    cli, _ = tiny_run
    single = last_checkpoint(cli)
    checkpoint = torch.load(single, map_location="cpu", weights_only=True)
    # The layout FSDP2Strategy writes: tensors through torch.distributed.checkpoint, the rest in meta.pt.
    sharded = single.parent / "sharded-for-export.ckpt"
    dcp.save({"state_dict": checkpoint.pop("state_dict")}, checkpoint_id=sharded, no_dist=True)
    torch.save(checkpoint, sharded / _METADATA_FILENAME)
    export_checkpoint(single, tmp_path / "from-file")
    summary = export_checkpoint(sharded, tmp_path / "from-shards", max_shard_bytes=300_000, dtype=torch.bfloat16)
    assert "model.safetensors.index.json" in summary["files"] and summary["dtype"] == "bfloat16"
    reference, exported = safetensors_of(tmp_path / "from-file"), safetensors_of(tmp_path / "from-shards")
    assert reference.keys() == exported.keys()
    for name, tensor in reference.items():
        assert torch.equal(exported[name], tensor.to(torch.bfloat16)), name
    index = json.loads((tmp_path / "from-shards" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(reference)
    assert load_hf(tmp_path / "from-shards").model.embed_tokens.weight.shape[0] == 512


XL_ATTENTION = "--model.init_args.network.init_args.attention.init_args."


@pytest.mark.parametrize(
    ("args", "architecture"),
    [
        ([f"--config={REPO / 'recipes' / 'variants' / 'dense.yaml'}"], "LlamaForCausalLM"),
        # xl.yaml's attention (five sliding-window layers to one global, two RoPE bases, QK-norm) at tiny
        # width, with every other block dense: Mellum's layer_types, rope_parameters and mlp_layer_types.
        ([f"{XL_ATTENTION}layer_pattern=LLLLLG", f"{XL_ATTENTION}window=6", f"{XL_ATTENTION}qk_norm=true",
          f"{XL_ATTENTION}rope_base=1000000.0", f"{XL_ATTENTION}local_rope_base=10000.0",
          "--model.init_args.network.init_args.n_layers=6", "--model.init_args.network.init_args.moe_every=2"],
         "MellumForCausalLM"),
    ],
    ids=["dense", "local-global-qk-norm"],
)
def test_recipe_variants_export_to_their_class_with_the_same_function(args, architecture, tmp_path: Path) -> None:
    network = recipe_network(*args)
    export_network(network, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [architecture]
    assert_same_function(network, tmp_path, vocab=512)


@pytest.mark.parametrize(
    ("network", "named"),
    [
        (lambda: small_network(num_shared_experts=1), "num_shared_experts"),
        (lambda: small_network(router=lambda d, e: __import__("constellation_kit.model", fromlist=["TopKRouter"])
                               .TopKRouter(d, e, score="sigmoid")), "router score='sigmoid'"),
        (lambda: small_network(layer_pattern="LG"), "layer_pattern mixing local and global"),
        (lambda: small_network(moe_every=2), "moe_every"),
    ],
    ids=["shared-expert", "sigmoid-router", "layer-pattern-without-qk-norm", "moe-every-without-qk-norm"],
)
def test_features_no_transformers_class_holds_stop_with_their_name(network, named: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        export_network(network(), tmp_path)


def test_a_balancer_bias_on_the_router_stops_the_export(tmp_path: Path) -> None:
    network = small_network()
    network.blocks[1].feed_forward.router.expert_bias[2] = 0.5
    with pytest.raises(ConfigError, match="block 1's router has a non-zero expert_bias"):
        export_network(network, tmp_path)


def test_the_xl_recipe_maps_to_mellum_on_the_meta_device() -> None:
    import contextlib
    import io

    from constellation_kit.cli import ConstellationCLI
    from constellation_kit.commands.plan import build_model
    from constellation_kit.interop import choose_family, describe
    from conftest import XL

    with contextlib.redirect_stdout(io.StringIO()):
        cli = ConstellationCLI(args=["plan", f"--config={XL}", "--json=true"])
    network, _ = build_model(cli.config["plan"].model, 32768)
    spec = describe(network)
    config = choose_family(spec).config(spec)
    assert choose_family(spec).architecture == "MellumForCausalLM"
    assert config["layer_types"][:6] == ["sliding_attention"] * 5 + ["full_attention"]
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10_000.0
    assert config["sliding_window"] == 1024 and config["rms_norm_eps"] == 1e-5
