"""Loading a trained run back from its checkpoint: the module, its tokenizer, and clear errors."""

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from lightning.fabric.utilities.load import _METADATA_FILENAME

from constellation_kit.errors import ConfigError
from constellation_kit.trained_model import TOKENIZER_KEY, load_trained_model
from conftest import last_checkpoint


def assert_same_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    assert loaded.keys() == state_dict.keys()
    for name, tensor in state_dict.items():
        assert torch.equal(loaded[name], tensor), name


def test_a_checkpoint_loads_with_its_weights_tokenizer_and_run(tiny_run) -> None:
    cli, _ = tiny_run
    path = last_checkpoint(cli)
    trained = load_trained_model(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert_same_weights(trained.module, saved["state_dict"])
    assert not trained.module.training
    assert trained.global_step == 2
    # The tokenizer comes from the checkpoint itself and is the one the run trained on.
    assert saved[TOKENIZER_KEY] == cli.datamodule.tokenizer.to_str()
    assert trained.tokenizer.encode("def main():").ids == cli.datamodule.tokenizer.encode("def main():").ids
    assert trained.mlflow_run_id == cli.trainer.logger.run_id
    assert type(trained.datamodule) is type(cli.datamodule)


def test_the_loaded_module_computes_what_the_trained_one_does(tiny_run) -> None:
    cli, _ = tiny_run
    trained = load_trained_model(last_checkpoint(cli))
    tokens = torch.tensor([trained.tokenizer.encode("import os\nprint(os.getcwd())").ids])
    with torch.no_grad():
        assert torch.equal(trained.module(tokens), cli.model.eval()(tokens))


def test_a_sharded_checkpoint_loads_the_same_weights(tiny_run, tmp_path: Path) -> None:
    cli, _ = tiny_run
    single = last_checkpoint(cli)
    checkpoint = torch.load(single, map_location="cpu", weights_only=True)
    # The layout FSDP2Strategy writes: tensors through torch.distributed.checkpoint, the rest in meta.pt.
    sharded = single.parent / "sharded.ckpt"
    dcp.save({"state_dict": checkpoint.pop("state_dict")}, checkpoint_id=sharded)
    torch.save(checkpoint, sharded / _METADATA_FILENAME)
    trained = load_trained_model(sharded)
    assert_same_weights(trained.module, torch.load(single, map_location="cpu", weights_only=True)["state_dict"])
    assert trained.tokenizer.to_str() == cli.datamodule.tokenizer.to_str()


def test_a_missing_checkpoint_says_where_checkpoints_are(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint at .*runs/<experiment>"):
        load_trained_model(tmp_path / "nothing.ckpt")


def test_a_checkpoint_without_its_run_config_asks_for_one(tiny_run, tmp_path: Path) -> None:
    cli, _ = tiny_run
    lonely = tmp_path / "a" / "b" / "c" / "last.ckpt"
    lonely.parent.mkdir(parents=True)
    lonely.write_bytes(last_checkpoint(cli).read_bytes())
    with pytest.raises(ConfigError, match="no config.yaml beside or above .*pass --config"):
        load_trained_model(lonely)


def test_a_truncated_checkpoint_is_named(tiny_run, tmp_path: Path) -> None:
    cli, _ = tiny_run
    run = last_checkpoint(cli).parents[1]
    broken = run / "checkpoints" / "broken.ckpt"
    broken.write_bytes(last_checkpoint(cli).read_bytes()[:1000])
    with pytest.raises(ConfigError, match="cannot read checkpoint .*broken.ckpt"):
        load_trained_model(broken)
