"""``constellation-kit generate`` on the tiny run's checkpoint: one prompt with an image, a JSONL file with audio."""

import json
import shutil
from pathlib import Path

import pytest

from constellation_kit.cli import main
from conftest import last_checkpoint


def media_path(cli, modality: str) -> str:
    return next(item.path for item in cli.datamodule.items if item.modality == modality)


@pytest.mark.slow
def test_generate_continues_a_prompt_after_an_image(tiny_run, capsys: pytest.CaptureFixture) -> None:
    cli, _ = tiny_run
    main(["generate", f"--ckpt_path={last_checkpoint(cli)}", "--prompt=A picture of",
          f"--image={media_path(cli, 'image')}", "--max_new_tokens=5", "--stop", "\x00", "\x01"])
    assert capsys.readouterr().out.strip("\n")  # some text, whatever two training steps taught it


@pytest.mark.slow
def test_generate_answers_a_jsonl_file_of_prompts(tiny_run, tmp_path: Path) -> None:
    from constellation_kit.eval.generation import generate_text
    from constellation_kit.trained_model import load_trained_model

    cli, _ = tiny_run
    # Media paths relative to the prompts file, as in a data manifest.
    shutil.copy(media_path(cli, "audio"), tmp_path / "clip.wav")
    shutil.copy(media_path(cli, "image"), tmp_path / "picture.png")
    rows = [{"prompt": "The sound of", "audio": "clip.wav", "id": 1}, {"prompt": "def main():", "id": 2},
            {"prompt": "A picture of", "image": "picture.png", "id": 3}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["generate", f"--ckpt_path={last_checkpoint(cli)}", f"--prompts={tmp_path / 'prompts.jsonl'}",
          f"--output={tmp_path / 'out.jsonl'}", "--max_new_tokens=4"])
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in w.items() if k != "completion"} for w in written] == rows
    expected = generate_text(load_trained_model(last_checkpoint(cli)), [r["prompt"] for r in rows], max_new_tokens=4,
                             images=[None, None, str(tmp_path / "picture.png")], audio=[str(tmp_path / "clip.wav"), None, None])
    assert [w["completion"] for w in written] == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt=a", "--prompts=p.jsonl"], "either --prompt TEXT or --prompts FILE.jsonl"),
        (["--prompts=missing.jsonl"], "no such file"),
    ],
)
def test_generate_names_what_is_wrong(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["generate", f"--ckpt_path={tmp_path / 'x.ckpt'}", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
