"""Curated source directories for tests, written in the shard format (constellation_kit.data.shards).

Until `constellation-kit curate` writes them, tests make their own: documents of known tokens, and
captioned pictures and clips encoded as files would be, plus a few broken ones.
"""

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from constellation_kit.data.shards import ShardItem, write_shards
from constellation_kit.data.tokenizer import END_OF_TEXT, ByteLevelBPE

SPECIALS = [END_OF_TEXT, "<|image|>", "<|audio|>"]


def tokenizer_json(cache_dir: Path, vocab_size: int = 300) -> str:
    """A byte-level BPE trained on a few sentences: ids 0..vocab_size-1, the special tokens first."""
    texts = [f"the picture number {i} shows a red square and a blue circle" for i in range(50)]
    tokenizer = ByteLevelBPE(vocab_size, special_tokens=SPECIALS).load_or_train(lambda: texts, "shard-tests", cache_dir)
    return tokenizer.to_str()


def text_items(count: int, low: int, high: int, seed: int, min_len: int = 1, max_len: int = 40) -> list[ShardItem]:
    """``count`` documents of random lengths whose tokens lie in ``[low, high)`` (so a test can tell sources apart)."""
    rng = np.random.default_rng(seed)
    return [ShardItem(rng.integers(low, high, size=int(rng.integers(min_len, max_len + 1))).astype(np.int32))
            for _ in range(count)]


def png_bytes(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12 + i % 5, 10), (i * 37 % 256, 80, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(i: int, samples: int = 900) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.full(samples + 50 * i, 0.05 * (1 + i % 3), dtype=np.float32), 16_000, format="WAV")
    return buffer.getvalue()


def media_items(count: int, low: int, high: int, seed: int, broken: int = 0) -> list[ShardItem]:
    """Captioned pictures and clips, alternating; ``broken`` of them, spread evenly, hold corrupt bytes."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        caption = rng.integers(low, high, size=int(rng.integers(2, 8))).astype(np.int32)
        bad = broken > 0 and i % (count // broken) == count // broken - 1
        if i % 2 == 0:
            items.append(ShardItem(caption, image=b"not a png" if bad else png_bytes(i)))
        else:
            items.append(ShardItem(caption, audio=b"RIFF\x00\x00" if bad else wav_bytes(i)))
    return items


def write_source(directory: Path, items: list[ShardItem], tokenizer: str, chunk_size: int = 16) -> Path:
    return write_shards(directory, items, tokenizer, chunk_size=chunk_size)


@contextlib.contextmanager
def s3_server(corpus: Path, bucket: str = "corpus", prefix: str = "curated") -> Iterator[tuple[str, str]]:
    """``corpus``'s files uploaded to a real S3-compatible server (moto's) on a free loopback port.

    Yields the corpus's URL (``s3://bucket/prefix``) and the server's endpoint; AWS credentials are
    set in the environment (loader workers inherit them) and restored after.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    from conftest import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        for path in corpus.rglob("*"):
            if path.is_file() and "cache" not in path.parts:
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(corpus).as_posix()}")
        yield f"s3://{bucket}/{prefix}", endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
