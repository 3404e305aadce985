"""The curation half of `benchmarks/data.py`: curate throughput and tokenise-and-pack throughput, per core.

Both run on one core: one datatrove task in this process (``workers=1``), and the ``tokenizers``
thread pool held to one thread (``RAYON_NUM_THREADS=1``, set before ``tokenizers`` is imported), so
the figures are per core. On a shared machine wall-clock rates understate a core, so each is also
given per CPU-second of this process (``time.process_time``), which other jobs do not inflate. A
machine with C cores running C tasks scales them by about C: the stages are independent per task,
except the single-task ``exact_find`` and ``near_cluster`` merges, timed separately here.
"""

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from datatrove.executor import LocalPipelineExecutor  # noqa: E402

from constellation_kit.data.curation import Curation  # noqa: E402
from constellation_kit.data.curation.tokenizer import train_tokenizer  # noqa: E402
from constellation_kit.data.packing import pack_documents  # noqa: E402


def english_words() -> list[str]:
    """Real words, offline: those of the standard library's docstrings and comments."""
    words: set[str] = set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]:
        words.update(w.lower() for w in re.findall(r"[A-Za-z]{3,12}", path.read_text(errors="ignore")))
    return sorted(words)


def make_corpus(folder: Path, documents: int, words: int, seed: int = 0) -> Path:
    """JSONL of prose-like documents, 10% exact copies and 10% near-duplicates (3 words changed)."""
    rng = random.Random(seed)
    vocabulary = english_words()
    stop = ["the", "of", "and", "to", "that", "have", "with", "be", "in", "is"]
    texts = []
    for _ in range(int(documents * 0.8)):
        chosen = [rng.choice(stop) if rng.random() < 0.3 else rng.choice(vocabulary) for _ in range(words)]
        texts.append("\n".join(" ".join(chosen[i:i + 15]) + "." for i in range(0, words, 15)))
    for _ in range(documents // 10):
        texts.append(rng.choice(texts))
    for _ in range(documents - len(texts)):
        ws = rng.choice(texts).split(" ")
        for _ in range(3):
            ws[rng.randrange(len(ws))] = rng.choice(vocabulary)
        texts.append(" ".join(ws))
    rng.shuffle(texts)
    path = folder / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    return path


def measure_curation(documents: int = 4000, words: int = 300, vocab_size: int = 8192) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    corpus = make_corpus(folder, documents, words)
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    tokenizer_path = folder / "tokenizer.json"
    tokenizer = train_tokenizer(iter(texts[:1000]), vocab_size, tokenizer_path)  # not timed

    stage_seconds: dict[str, float] = {}
    run = LocalPipelineExecutor.run

    def timed_run(self):
        started = time.perf_counter()
        try:
            return run(self)
        finally:
            stage_seconds[Path(str(self.logging_dir.path)).name] = round(time.perf_counter() - started, 3)

    LocalPipelineExecutor.run = timed_run
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        report = Curation(tasks=1, workers=1).run([str(corpus)], folder / "out", str(tokenizer_path))
        curate_s, curate_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        LocalPipelineExecutor.run = run

    # Tokenise and pack: what a data module does at start-up without shards, one core.
    started, cpu_started = time.perf_counter(), time.process_time()
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    documents_ids = [np.asarray(e.ids, dtype=np.int32) for e in encodings]
    packed = pack_documents(documents_ids, seq_len=2048, eos_id=0)
    pack_s, pack_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    pack_tokens = int(sum(len(d) for d in documents_ids))
    return {
        "curate_documents_in": report["documents_in"],
        "curate_documents_out": report["documents_out"],
        "curate_tokens_out": report["tokens_out"],
        "curate_exact_removed": report["exact_duplicates_removed"],
        "curate_near_removed": report["near_duplicates_removed"],
        "curate_s": round(curate_s, 2),
        "curate_documents_per_s_per_core": round(report["documents_in"] / curate_s, 1),
        "curate_tokens_per_s_per_core": round(report["tokens_out"] / curate_s),
        "curate_cpu_s": round(curate_cpu_s, 2),
        "curate_documents_per_cpu_s": round(report["documents_in"] / curate_cpu_s, 1),
        "curate_tokens_per_cpu_s": round(report["tokens_out"] / curate_cpu_s),
        "curate_stage_s": stage_seconds,
        "pack_tokens": pack_tokens,
        "pack_windows": len(packed),
        "pack_s": round(pack_s, 3),
        "pack_cpu_s": round(pack_cpu_s, 3),
        "tokenize_pack_tokens_per_s_per_core": round(pack_tokens / pack_s),
        "tokenize_pack_tokens_per_cpu_s": round(pack_tokens / pack_cpu_s),
    }
