"""Streaming from shards: exact resume (2 workers, 2 processes), mixture shares, S3 equals local, bad media counted."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from shard_fixtures import media_items, s3_server, text_items, tokenizer_json, write_source

from constellation_kit.data import ShardSource, StreamingDataModule
from constellation_kit.data.media import SKIP_REASONS
from constellation_kit.errors import ConfigError

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sources: "web" (text, tokens 10..99) and "caps" (pictures and clips, captions 100..199, 3 broken)."""
    root = tmp_path_factory.mktemp("corpus")
    tokenizer = tokenizer_json(root / "cache")
    write_source(root / "web", text_items(400, 10, 100, seed=0), tokenizer)
    write_source(root / "caps", media_items(96, 100, 200, seed=1, broken=3), tokenizer)
    return root


def datamodule(paths: list[str], weights: list[float] | None = None, **overrides) -> StreamingDataModule:
    weights = weights or [1.0] * len(paths)
    args = dict(
        image_backbone_kwargs=TINY_VIT, image_size=32, image_tokens=4, audio_tokens=3, audio_seconds=0.1,
        seq_len=32, global_batch_size=4, val_fraction=0.1, seed=5, num_workers=0,
    )
    return StreamingDataModule([ShardSource(p, w) for p, w in zip(paths, weights)], **{**args, **overrides})


def consume(dm: StreamingDataModule, n: int, loader=None) -> list[dict]:
    """The next ``n`` training batches, each passed through the hook Lightning calls on consumed batches."""
    loader = loader if loader is not None else iter(dm.train_dataloader())
    return [dm.on_before_batch_transfer(next(loader), 0) for _ in range(n)]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys(), i
        for key in x:
            assert torch.equal(x[key], y[key]), f"batch {i}: {key} differs"


def test_resume_mid_epoch_with_two_workers_sees_the_uninterrupted_batches(corpus: Path):
    paths = [str(corpus / "web"), str(corpus / "caps")]
    straight = datamodule(paths, num_workers=2)
    loader = iter(straight.train_dataloader())
    first = consume(straight, 7, loader)  # odd: the resumed loader must start with the second worker
    state = straight.state_dict()
    rest = consume(straight, 9, loader)  # past the end of the caps source's first epoch on each slot

    resumed = datamodule(paths, num_workers=2)
    resumed.load_state_dict(state)
    assert_same_batches(consume(resumed, 9), rest)
    assert any(b["image"].shape[0] for b in first + rest) and any(b["audio"].shape[0] for b in first + rest)


def test_resume_at_another_worker_count_starts_every_source_at_a_fresh_shuffle(corpus: Path, caplog):
    paths = [str(corpus / "web")]
    straight = datamodule(paths, num_workers=0)
    consume(straight, 3)
    resumed = datamodule(paths, num_workers=2)
    resumed.load_state_dict(straight.state_dict())
    assert "fresh shuffle" in caplog.text
    assert all(s["positions"]["web"] == [1, 0] for s in resumed._resume[0].values())
    consume(resumed, 2)  # and it streams


def _two_ranks(rank: int, port: int, paths: list[str], out: str) -> None:
    # Loader workers fork, as under torchrun or srun; a spawned rank would otherwise spawn them, and
    # each would import the whole stack again.
    mp.set_start_method("fork", force=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        def make() -> StreamingDataModule:
            dm = datamodule(paths, num_workers=1, global_batch_size=8)
            dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, accumulate_grad_batches=1, training=True)
            return dm

        straight = make()
        loader = iter(straight.train_dataloader())
        first = consume(straight, 5, loader)
        state = straight.state_dict()  # a collective: both ranks' positions
        rest = consume(straight, 6, loader)
        resumed = make()
        resumed.load_state_dict(state)
        again = consume(resumed, 6)
        torch.save({"first": first, "rest": rest, "again": again, "state": state}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_resume_with_two_processes_sees_the_uninterrupted_batches(corpus: Path, tmp_path: Path):
    paths = [str(corpus / "web"), str(corpus / "caps")]
    mp.spawn(_two_ranks, args=(free_port(), paths, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        assert_same_batches(r["again"], r["rest"])
    assert ranks[0]["state"] == ranks[1]["state"]  # every rank saves the whole grid's position
    # The ranks read different documents: no training window is on both.
    windows = [{tuple(row.tolist()) for b in r["first"] + r["rest"] for row in b["tokens"]} for r in ranks]
    assert not windows[0] & windows[1]


def test_mixture_shares_hold_within_sampling_error_and_weights_can_change_on_resume(tmp_path: Path):
    tokenizer = tokenizer_json(tmp_path / "cache")
    # Every document 15 tokens (+ end-of-text): the token share of a source is its document share.
    write_source(tmp_path / "a", text_items(300, 10, 100, seed=2, min_len=15, max_len=15), tokenizer)
    write_source(tmp_path / "b", text_items(300, 100, 200, seed=3, min_len=15, max_len=15), tokenizer)
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]

    def share_of_a(batches: list[dict]) -> tuple[float, int]:
        tokens = torch.cat([b["tokens"].flatten() for b in batches])
        text = tokens[(tokens >= 10) & (tokens < 200)]
        return float((text < 100).float().mean()), len(text) // 15

    dm = datamodule(paths, weights=[3.0, 1.0], seq_len=64, global_batch_size=8)
    share, documents = share_of_a(consume(dm, 40))
    sigma = (0.75 * 0.25 / documents) ** 0.5  # binomial over documents drawn
    assert abs(share - 0.75) < 4 * sigma, (share, documents)

    reweighted = datamodule(paths, weights=[1.0, 3.0], seq_len=64, global_batch_size=8)
    reweighted.load_state_dict(dm.state_dict())  # weights are not part of the data fingerprint
    share, documents = share_of_a(consume(reweighted, 40))
    assert abs(share - 0.25) < 4 * (0.75 * 0.25 / documents) ** 0.5, (share, documents)


def test_bad_media_are_blanks_counted_by_reason(corpus: Path):
    dm = datamodule([str(corpus / "caps")], val_fraction=0.1)
    counts = sum(b["media_skipped"] for b in consume(dm, 30))  # more than one epoch of this slot's items
    assert counts[SKIP_REASONS.index("corrupt")] >= 1
    assert counts.sum() == counts[SKIP_REASONS.index("corrupt")]


def test_validation_is_the_held_out_chunks_the_same_every_time(corpus: Path):
    dm = datamodule([str(corpus / "web")])
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert first and len(first) == len(second)
    assert_same_batches(first, second)
    train_windows = {tuple(r.tolist()) for b in consume(dm, 20) for r in b["tokens"]}
    assert not train_windows & {tuple(r.tolist()) for b in first for r in b["tokens"]}


def test_sources_with_different_tokenizers_are_refused(corpus: Path, tmp_path: Path):
    write_source(tmp_path / "other", text_items(40, 10, 100, seed=4), tokenizer_json(tmp_path / "c", vocab_size=280))
    dm = datamodule([str(corpus / "web"), str(tmp_path / "other")])
    with pytest.raises(ConfigError, match="another tokenizer"):
        dm.setup("fit")


# -- object storage ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_corpus(corpus: Path):
    """The corpus on a real S3-compatible server (moto's) on loopback: its URL and endpoint."""
    with s3_server(corpus) as served:
        yield served


def test_s3_streams_the_same_batches_as_local(corpus: Path, s3_corpus, tmp_path: Path):
    url, endpoint = s3_corpus
    local = datamodule([str(corpus / "web"), str(corpus / "caps")], num_workers=2)
    remote = datamodule([f"{url}/web", f"{url}/caps"], num_workers=2, storage_options={"endpoint_url": endpoint},
                        cache_dir=str(tmp_path / "cache"))
    remote.setup("fit")
    assert remote.vocab_size == local.vocab_size
    assert_same_batches(consume(remote, 6), consume(local, 6))
    assert_same_batches(list(remote.val_dataloader()), list(local.val_dataloader()))
    assert list((tmp_path / "cache" / "streams").iterdir())  # chunks came through the local cache


@pytest.mark.slow
def test_a_curated_directory_streams_its_documents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`constellation-kit curate`'s own output (one chunk: the small-corpus split) through the streaming module."""
    import json
    import random

    from tokenizers import Tokenizer

    from constellation_kit.cli import main

    monkeypatch.chdir(tmp_path)
    rng = random.Random(0)
    words = ["".join(rng.choice("klmnoprstu") for _ in range(6)) for _ in range(500)]
    # A quarter stop words, as curate's word filter expects of natural text.
    docs = [" ".join(rng.choice(["the", "and", "of"] if rng.random() < 0.25 else words) for _ in range(80)) + "."
            for _ in range(40)]
    (tmp_path / "raw.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    main(["curate", "--input", str(tmp_path / "raw.jsonl"), "--output", "web", "--tasks=1", "--workers=1",
          "--vocab_size=300"])
    dm = datamodule([str(tmp_path / "web")], val_fraction=0.1)
    batches = consume(dm, 4)
    tokenizer = Tokenizer.from_file(str(tmp_path / "web" / "tokenizer.json"))
    text = tokenizer.decode(batches[0]["tokens"][0].tolist())
    assert any(" ".join(text.split()[1:4]) in d for d in docs)  # curated words, in their documents' order
    assert list(dm.val_dataloader())
