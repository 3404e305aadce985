"""`constellation-kit curate` and `constellation-kit tokenizer train` through the real CLI."""

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from constellation_kit.cli import main
from conftest import REPO, tracking_client

DEFAULT = REPO / "recipes" / "curate" / "default.yaml"


def corpus(folder: Path) -> Path:
    rng = random.Random(1)
    vocabulary = ["".join(rng.choice("klmnoprstu") for _ in range(6)) for _ in range(500)]
    docs = [" ".join(rng.choice(["the", "and", "of"] if rng.random() < 0.25 else vocabulary) for _ in range(80)) + "."
            for _ in range(6)]
    path = folder / "raw.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs + docs[:2]) + '\n{"text": "cut\n')
    return path


@pytest.mark.slow
def test_curate_cli_writes_shards_report_and_mlflow_run(in_tmp_dir: Path, capsys: pytest.CaptureFixture) -> None:
    raw = corpus(in_tmp_dir)
    uri = f"sqlite:///{in_tmp_dir / 'mlflow.db'}"
    main(["curate", f"--config={DEFAULT}", "--input", str(raw), "--output", "out", "--tasks=1", "--workers=1",
          "--vocab_size=300", f"--tracking_uri={uri}"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == json.loads((in_tmp_dir / "out" / "report.json").read_text())
    assert (report["documents_in"], report["exact_duplicates_removed"], report["documents_out"]) == (9, 2, 6)
    assert report["skipped"] == {"truncated_json": 1}
    assert Tokenizer.from_file(str(in_tmp_dir / "out" / "tokenizer.json")).get_vocab_size() == 300
    assert (in_tmp_dir / "out" / "shards" / "index.json").is_file()
    # The hand-over copies of the corpus are gone; the logs that make a rerun a no-op stay.
    assert not any((in_tmp_dir / "out" / "work" / part).exists() for part in ("clean", "unique", "final", "exact", "near"))
    assert (in_tmp_dir / "out" / "work" / "logs" / "read" / "completions" / "00000").is_file()
    client = tracking_client(in_tmp_dir)
    run = client.search_runs([client.get_experiment_by_name("curate").experiment_id])[0]
    assert run.data.metrics["curate/documents_out"] == 6
    assert run.data.metrics["curate/skipped/truncated_json"] == 1
    assert run.data.params["near_dedup.threshold"] == "0.8"


@pytest.mark.slow
def test_curate_cli_with_a_given_tokenizer(in_tmp_dir: Path, capsys: pytest.CaptureFixture) -> None:
    raw = corpus(in_tmp_dir)
    main(["tokenizer", "train", "--input", str(raw), "--vocab_size=280", "--output", "tok.json"])
    assert "<|pad|>=3" in capsys.readouterr().out
    main(["curate", "--input", str(raw), "--output", "out", "--tokenizer", "tok.json", "--tasks=1", "--workers=1"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["documents_out"] == 6 and report["tokens_out"] > 0
    assert (in_tmp_dir / "out" / "tokenizer.json").read_bytes() == (in_tmp_dir / "tok.json").read_bytes()


def test_curate_cli_bad_input_is_one_line_exit_2(in_tmp_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["curate", "--input", "nowhere", "--output", "out"])
    assert exit_.value.code == 2
    assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["curate", "--input", "nowhere", "--output", "out", "--near_dedup.threshold=1.5"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("config", sorted((REPO / "recipes" / "curate").glob("*.yaml")), ids=lambda p: p.name)
def test_every_curate_config_parses_and_builds(config: Path) -> None:
    from jsonargparse import ArgumentParser

    from constellation_kit.commands.curate import add_arguments, build_curation

    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    add_arguments(parser)
    curation = build_curation(parser.parse_args([f"--config={config}", "--input", "x", "--output", "y"]))
    assert [f.report_name for f in curation.filters] == ["length", "symbols", "words", "repetition"]
    assert (curation.near_dedup.bands, curation.near_dedup.rows) == (17, 7)
