"""The tiny recipe trained from shards through the console script: one source on disk, one on a loopback S3 server."""


import pytest
import torch
import yaml
from shard_fixtures import media_items, s3_server, text_items, tokenizer_json, write_source

from conftest import TINY, enter_run_directory, tracking_client
from constellation_kit.cli import ConstellationCLI

STEPS = ["--trainer.max_steps=3", "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=1",
         "--trainer.val_check_interval=3"]


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("streamed")
    tokenizer = tokenizer_json(root / "cache")
    write_source(root / "corpus" / "web", text_items(300, 10, 290, seed=0), tokenizer)
    write_source(root / "corpus" / "caps", media_items(64, 10, 290, seed=1, broken=2), tokenizer)
    with s3_server(root / "corpus") as (url, endpoint):
        data = {"data": {"class_path": "constellation_kit.data.StreamingDataModule", "init_args": {
            "sources": [{"path": str(root / "corpus" / "web"), "weight": 3.0}, {"path": f"{url}/caps", "weight": 1.0}],
            "storage_options": {"endpoint_url": endpoint},
            "tokenizer": None,  # the shards' own (tiny.yaml names a 2048-token one to train)
            "image_backbone_kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
            "image_size": 32, "image_tokens": 16, "audio_tokens": 4, "audio_seconds": 0.5,
            "seq_len": 32, "global_batch_size": 4, "val_fraction": 0.1, "num_workers": 1,
            "cache_dir": str(root / "cache"),
        }}}
        (root / "streamed.yaml").write_text(yaml.safe_dump(data))
        with pytest.MonkeyPatch.context() as patch:
            (root / "run").mkdir()
            enter_run_directory(patch, root / "run")
            cli = ConstellationCLI(args=["fit", f"--config={TINY}", f"--config={root / 'streamed.yaml'}", *STEPS])
            metrics = tracking_client().get_run(cli.trainer.logger.run_id).data.metrics
            checkpoint = torch.load(next((root / "run").rglob("last.ckpt")), weights_only=False)
    return cli, metrics, checkpoint


@pytest.mark.slow
def test_tiny_trains_from_local_and_s3_shards(streamed_run):
    cli, metrics, checkpoint = streamed_run
    assert cli.trainer.global_step == 3
    assert cli.model.vocab_size == 300  # from the shards' tokenizer.json, linked into the model
    assert {"train/loss", "val/loss", "data/skipped_items"} <= set(metrics)
    state = checkpoint["StreamingDataModule"]
    assert '"consumed": [3]' in state["stream"]  # the loader position went into the checkpoint
