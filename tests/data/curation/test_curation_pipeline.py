"""`Curation` end to end on a planted corpus: every count of the report checked against what was planted."""

import json
import shutil
import time
from pathlib import Path

import litdata
import pytest
from tokenizers import Tokenizer

from constellation_kit.data.curation import Curation
from constellation_kit.data.curation.tokenizer import SPECIAL_TOKENS
from constellation_kit.errors import ConfigError
from planted_corpus import PlantedCorpus, build, jaccard


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> PlantedCorpus:
    return build(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def curated(planted: PlantedCorpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("curated") / "out"
    # Hand-over files kept: test_a_rerun_resumes_after_a_lost_task reruns a shard task after the end.
    report = Curation(tasks=2, workers=1, vocab_size=400, keep_work_files=True).run(planted.inputs, output)
    return output, report


def shard_items(output: Path) -> list[dict]:
    dataset = litdata.StreamingDataset(str(output / "shards"))
    return [dataset[i] for i in range(len(dataset))]


def texts_out(output: Path) -> list[str]:
    tokenizer = Tokenizer.from_file(str(output / "tokenizer.json"))
    return [tokenizer.decode(item["tokens"].tolist()) for item in shard_items(output) if not bytes(item["image"]) and not bytes(item["audio"])]


def test_planted_near_duplicates_are_similar_and_distinct_documents_are_not(planted: PlantedCorpus) -> None:
    assert min(jaccard(a, b) for a, b in planted.near_pairs) >= 0.8
    sample = planted.distinct[:20]
    assert max(jaccard(a, b) for i, a in enumerate(sample) for b in sample[i + 1:]) < 0.1


def test_exact_duplicates_all_removed_and_no_distinct_document_removed(curated, planted: PlantedCorpus) -> None:
    output, _ = curated
    texts = texts_out(output)
    assert len(texts) == len(set(texts)), "an exact duplicate survived"
    for document in planted.distinct:
        assert texts.count(document) == 1, "a distinct document was removed"


def test_near_duplicates_removed_with_high_recall(curated, planted: PlantedCorpus) -> None:
    output, report = curated
    texts = set(texts_out(output))
    both_kept = sum(a in texts and b in texts for a, b in planted.near_pairs)
    assert all(a in texts or b in texts for a, b in planted.near_pairs), "a whole near-duplicate cluster was removed"
    recall = 1 - both_kept / len(planted.near_pairs)
    assert recall >= 0.95
    assert report["near_duplicates_removed"] == len(planted.near_pairs) - both_kept


def test_report_counts_match_the_planted_corpus(curated, planted: PlantedCorpus) -> None:
    output, report = curated
    assert json.loads((output / "report.json").read_text()) == report
    missed = len(planted.near_pairs) - report["near_duplicates_removed"]
    assert report["documents_in"] == planted.documents_in
    assert report["skipped"] == planted.skipped
    assert report["filtered"] == planted.filtered
    assert report["exact_duplicates_removed"] == planted.exact_copies
    assert report["documents_out"] == planted.documents_out + missed
    assert report["accounted"] is True
    items = shard_items(output)
    assert len(items) == report["documents_out"]
    assert sum(len(item["tokens"]) for item in items) == report["tokens_out"]


def test_shards_hold_the_contract_format(curated, planted: PlantedCorpus) -> None:
    output, _ = curated
    items = shard_items(output)
    assert all(item["tokens"].dtype.name == "int32" and item["tokens"].ndim == 1 for item in items)
    images = sorted(bytes(i["image"]) for i in items if bytes(i["image"]))
    media = planted.root / "media"
    assert images == sorted([(media / "red.png").read_bytes(), (media / "blue.png").read_bytes()])
    assert [bytes(i["audio"]) for i in items if bytes(i["audio"])] == [(media / "beep.wav").read_bytes()]
    tokenizer = Tokenizer.from_file(str(output / "tokenizer.json"))
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    # No special token inside a document: the packer adds the separators.
    assert all(int(item["tokens"].min()) >= len(SPECIAL_TOKENS) for item in items)


def test_rerun_does_no_work_twice(curated, planted: PlantedCorpus) -> None:
    output, report = curated
    index = output / "shards" / "index.json"
    chunks = sorted((output / "shards").glob("chunk-*.bin"))
    stamps = [c.stat().st_mtime_ns for c in chunks]
    started = time.time()
    again = Curation(tasks=2, workers=1, vocab_size=400, keep_work_files=True).run(planted.inputs, output)
    assert again["documents_out"] == report["documents_out"] and again["tokens_out"] == report["tokens_out"]
    assert [c.stat().st_mtime_ns for c in chunks] == stamps, "a finished shard task ran again"
    assert index.is_file()


def test_a_rerun_resumes_after_a_lost_task(curated, planted: PlantedCorpus, tmp_path: Path) -> None:
    output, report = curated
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    # As if shard task 1 had died: its completion mark and chunks gone, the report not written.
    (copy / "work" / "logs" / "shards" / "completions" / "00001").unlink()
    for chunk in (copy / "shards").glob("chunk-1-*.bin"):
        chunk.unlink()
    (copy / "work" / "logs" / "report" / "completions" / "00000").unlink()
    task0 = [c.stat().st_mtime_ns for c in sorted((copy / "shards").glob("chunk-0-*.bin"))]
    resumed = Curation(tasks=2, workers=1, vocab_size=400, keep_work_files=True).run(planted.inputs, copy)
    assert {k: v for k, v in resumed.items()} == report
    assert [c.stat().st_mtime_ns for c in sorted((copy / "shards").glob("chunk-0-*.bin"))] == task0
    assert len(shard_items(copy)) == report["documents_out"]


def test_changed_settings_refuse_to_mix_with_an_earlier_curation(curated, planted: PlantedCorpus) -> None:
    output, _ = curated
    with pytest.raises(ConfigError, match="--overwrite"):
        Curation(tasks=3, workers=1, vocab_size=400).run(planted.inputs, output)
