"""Sharded safetensors, as transformers writes and reads them.

One file, ``model.safetensors``, when everything fits in one shard; otherwise
``model-00001-of-0000N.safetensors``... with ``model.safetensors.index.json`` mapping each tensor
name to its file (``{"metadata": {"total_size": bytes}, "weight_map": {name: file}}``), the layout
``PreTrainedModel.save_pretrained`` produces. Tensors are written as they come and each shard is
flushed when full, so an export holds at most one shard in memory.

Reading memory-maps the files (``safe_open``) and returns a row range of a tensor without reading
the rest (``get_slice``): what lets each FSDP2 rank read only its own shard of each parameter.
"""

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from constellation_kit.errors import ConfigError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def write_sharded(tensors: Iterable[tuple[str, torch.Tensor]], directory: Path, max_shard_bytes: int) -> int:
    """Write ``(name, tensor)`` pairs into safetensors shards of at most ``max_shard_bytes``; return total bytes.

    A tensor larger than the limit gets a shard of its own (transformers does the same).
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in [*directory.glob("model-*-of-*.safetensors"), directory / SINGLE_FILE, directory / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    shards: list[list[str]] = []
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = total = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if pending:
            save_file(pending, directory / f".shard-{len(shards):05d}.safetensors", metadata={"format": "pt"})
            shards.append(list(pending))
            pending, pending_bytes = {}, 0

    for name, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        if pending and pending_bytes + size > max_shard_bytes:
            flush()
        pending[name] = tensor.contiguous()
        pending_bytes += size
        total += size
    flush()
    if len(shards) == 1:
        (directory / ".shard-00000.safetensors").rename(directory / SINGLE_FILE)
        return total
    weight_map = {}
    for index, names in enumerate(shards):
        final = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        (directory / f".shard-{index:05d}.safetensors").rename(directory / final)
        weight_map.update(dict.fromkeys(names, final))
    index_json = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_FILE).write_text(json.dumps(index_json, indent=2) + "\n")
    return total


class SafetensorsReader:
    """Tensors of a transformers checkpoint directory (one file or sharded), read lazily by name.

    ``shape(name)`` costs nothing; ``read(name, start, stop)`` returns rows ``[start, stop)`` of
    dimension 0 (all of it by default) as a fresh CPU tensor, touching only those bytes.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if (self.directory / INDEX_FILE).is_file():
            weight_map = json.loads((self.directory / INDEX_FILE).read_text())["weight_map"]
        elif (self.directory / SINGLE_FILE).is_file():
            with safe_open(self.directory / SINGLE_FILE, "pt") as f:
                weight_map = dict.fromkeys(f.keys(), SINGLE_FILE)
        else:
            raise ConfigError(f"{self.directory} holds no {SINGLE_FILE} nor {INDEX_FILE}: point it at a "
                              "transformers checkpoint directory (what save_pretrained or `constellation-kit export` writes)")
        self.files = {name: self.directory / file for name, file in weight_map.items()}
        self._handles: dict[Path, object] = {}

    def names(self) -> list[str]:
        return list(self.files)

    def _handle(self, name: str):
        if name not in self.files:
            raise ConfigError(f"tensor {name!r} is not in the checkpoint {self.directory}")
        path = self.files[name]
        if path not in self._handles:
            self._handles[path] = safe_open(path, "pt")
        return self._handles[path]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        handle = self._handle(name)
        if start is None and stop is None:
            return handle.get_tensor(name)
        return handle.get_slice(name)[start:stop]
