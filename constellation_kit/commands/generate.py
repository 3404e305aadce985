"""``constellation-kit generate``: continue a prompt (with an image or a sound) from a checkpoint.

One prompt::

    constellation-kit generate --ckpt_path runs/.../last.ckpt --prompt "def main():" --max_new_tokens 64
    constellation-kit generate --ckpt_path ... --prompt "A picture of" --image cat.png --temperature 0.8 --top_p 0.9

A file of prompts, one JSON object a line (``{"prompt": ..., "image": ..., "audio": ...}``, media paths
relative to the file; other keys are copied through), written back as JSONL with a ``completion``
added to each line::

    constellation-kit generate --ckpt_path ... --prompts prompts.jsonl --output completions.jsonl

The model is rebuilt from the run's own ``config.yaml`` (:func:`~constellation_kit.trained_model.load_trained_model`)
and sampled with a KV cache (:mod:`constellation_kit.eval.generation`).
"""

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser, Namespace

from constellation_kit.cli import Command, ConstellationCLI, register_command
from constellation_kit.errors import ConfigError

log = logging.getLogger(__name__)

CHUNK = 64
"""Prompts of a ``--prompts`` file generated (and written out) together."""


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint file or sharded directory written by fit")
    parser.add_argument("--prompt", type=str | None, default=None, help="the text to continue")
    parser.add_argument("--prompts", type=str | None, default=None,
                        help='a JSONL file of {"prompt": ..., "image"?: ..., "audio"?: ...} lines, instead of --prompt')
    parser.add_argument("--output", type=str | None, default=None, help="where --prompts writes its JSONL (default: stdout)")
    parser.add_argument("--image", type=str | None, default=None, help="an image the prompt follows (multimodal runs)")
    parser.add_argument("--audio", type=str | None, default=None, help="a sound clip the prompt follows (multimodal runs)")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="at most this many new tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy; higher is more random (e.g. 0.8)")
    parser.add_argument("--top_k", type=int | None, default=None, help="sample among the k most likely tokens only")
    parser.add_argument("--top_p", type=float | None, default=None, help="sample within the top-p probability nucleus only")
    parser.add_argument("--stop", type=str, nargs="+", default=None, help="end a continuation before any of these strings")
    parser.add_argument("--seed", type=int | None, default=None, help="seed of the sampling's random draws (reproducible output)")
    parser.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:1, ...; auto is cuda when there is one")


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """The lines of a prompts file, as written."""
    if not path.is_file():
        raise ConfigError(f"--prompts {path}: no such file; give a JSONL file with one {{\"prompt\": ...}} object a line")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{number} is not JSON ({error.msg}): each line must be one JSON object") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ConfigError(f'{path}:{number} needs a "prompt" string, e.g. {{"prompt": "def main():"}}')
        rows.append(row)
    return rows


def media_paths(rows: list[dict[str, Any]], key: str, folder: Path) -> list[str | None]:
    """Each row's ``key`` file, relative paths starting from ``folder`` (the prompts file's)."""
    return [None if row.get(key) is None else str(folder / row[key]) for row in rows]  # absolute stays absolute


def run(config: Namespace, cli: ConstellationCLI) -> None:
    from constellation_kit.eval.generation import generate_text
    from constellation_kit.trained_model import load_trained_model

    if (config.prompt is None) == (config.prompts is None):
        raise ConfigError("give either --prompt TEXT or --prompts FILE.jsonl (one of the two)")
    if config.prompts is not None and (config.image or config.audio):
        raise ConfigError('with --prompts, name each line\'s media in the file ("image": ..., "audio": ...), not --image/--audio')
    rows = read_prompts(Path(config.prompts)) if config.prompts is not None else []  # bad input fails before loading
    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    trained = load_trained_model(config.ckpt_path, device=device)
    options = dict(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k,
                   top_p=config.top_p, stop=config.stop, seed=config.seed)
    if config.prompt is not None:
        (text,) = generate_text(trained, [config.prompt], images=[config.image], audio=[config.audio], **options)
        print(text)
        return
    folder = Path(config.prompts).parent
    out = open(config.output, "w") if config.output else sys.stdout
    try:
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            texts = generate_text(trained, [r["prompt"] for r in chunk], images=media_paths(chunk, "image", folder),
                                  audio=media_paths(chunk, "audio", folder), **options)
            for row, text in zip(chunk, texts, strict=True):
                out.write(json.dumps({**row, "completion": text}) + "\n")
            out.flush()
            log.info("generated %d/%d", start + len(chunk), len(rows))
    finally:
        if out is not sys.stdout:
            out.close()


register_command(Command(
    name="generate",
    help="Continue a prompt (or a JSONL file of prompts), optionally after an image or a sound, from a checkpoint.",
    add_arguments=add_arguments,
    run=run,
))
