"""How one kit tensor is laid out in a transformers checkpoint, in both directions.

A :class:`TensorMap` ties a kit parameter (named relative to the
:class:`~constellation_kit.model.Transformer`) to the transformers tensors that hold the same numbers:

- ``copy``: the same matrix. The kit pads the vocabulary up to a multiple of ``pad_vocab_to``
  (rows never used as targets); ``rows`` is the real vocabulary, so export drops the padding and
  import fills it with zeros.
- ``rows``: the kit fuses matrices along the output dimension (``kv_proj`` is ``[k_proj; v_proj]``,
  a dense ``gate_up_proj`` is ``[gate_proj; up_proj]``).
- ``experts_gate_up`` / ``experts_down``: the kit stacks experts "in × out" for a grouped matmul,
  ``gate_up_proj`` (E, D, 2H) = ``[gate_e^T | up_e^T]`` and ``down_proj`` (E, H, D) = ``down_e^T``;
  checkpoints on disk hold one (out, in) ``nn.Linear`` weight per expert and matrix (Mixtral's
  ``w1``/``w3``/``w2``, Qwen-style ``gate_proj``/``up_proj``/``down_proj``), which is also what
  ``save_pretrained`` writes and vLLM reads.

Import reads a *row range* of a kit tensor (:meth:`TensorMap.read_rows`): under FSDP2 each rank owns
rows ``[start, stop)`` of dimension 0 and reads only the checkpoint slices those rows come from
(for stacked experts, only its experts' matrices).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

Layout = Literal["copy", "rows", "experts_gate_up", "experts_down"]


class TensorReader(Protocol):
    """Reads transformers tensors by name: their shape, and a range of their rows."""

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class TensorMap:
    """One kit tensor and the transformers tensors that hold it (see the module docstring)."""

    kit: str
    hf: tuple[str, ...]
    """Transformers names; for the expert layouts, templates with ``{e}`` for the expert index."""
    layout: Layout = "copy"
    rows: int | None = None
    """``copy`` only: the transformers tensor's row count when the kit pads (the vocabulary)."""
    num_experts: int = 0

    def hf_names(self) -> list[str]:
        """Every transformers tensor name this map reads or writes."""
        if self.layout.startswith("experts"):
            return [t.format(e=e) for e in range(self.num_experts) for t in self.hf]
        return list(self.hf)

    def to_hf(self, kit: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a kit tensor into its transformers tensors (contiguous, ready to save)."""
        if self.layout == "copy":
            return {self.hf[0]: (kit if self.rows is None else kit[: self.rows]).contiguous()}
        if self.layout == "rows":
            sizes = kit.shape[0] // len(self.hf)
            return {name: part.contiguous() for name, part in zip(self.hf, kit.split(sizes), strict=True)}
        out = {}
        for e in range(self.num_experts):
            if self.layout == "experts_gate_up":
                gate_DH, up_DH = kit[e].chunk(2, dim=-1)
                out[self.hf[0].format(e=e)] = gate_DH.t().contiguous()  # (H, D)
                out[self.hf[1].format(e=e)] = up_DH.t().contiguous()
            else:
                out[self.hf[0].format(e=e)] = kit[e].t().contiguous()  # (D, H)
        return out

    def kit_shape(self, reader: TensorReader) -> tuple[int, ...]:
        """The kit tensor's shape as the checkpoint implies it (padding rows excluded)."""
        shapes = [reader.shape(name) for name in self.hf_names()]
        if self.layout == "copy":
            return shapes[0]
        if self.layout == "rows":
            return (sum(s[0] for s in shapes), *shapes[0][1:])
        if self.layout == "experts_gate_up":
            hidden, width = shapes[0]
            return (self.num_experts, width, 2 * hidden)
        width, hidden = shapes[0]
        return (self.num_experts, hidden, width)

    def read_rows(self, reader: TensorReader, start: int, stop: int, full_rows: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of the kit tensor (``full_rows`` rows in all), read from ``reader``."""
        if self.layout == "copy":
            available = reader.shape(self.hf[0])[0]
            got = reader.read(self.hf[0], min(start, available), min(stop, available))
            if stop > available:  # vocabulary padding: rows that exist only in the kit, never used
                pad = torch.zeros(stop - max(start, available), *got.shape[1:], dtype=got.dtype)
                got = torch.cat([got, pad])
            return got
        if self.layout == "rows":
            parts, offset = [], 0
            for name in self.hf:
                size = reader.shape(name)[0]
                lo, hi = max(start, offset), min(stop, offset + size)
                if lo < hi:
                    parts.append(reader.read(name, lo - offset, hi - offset))
                offset += size
            return torch.cat(parts) if parts else torch.empty(0, *reader.shape(self.hf[0])[1:])
        experts = []
        for e in range(start, stop):
            if self.layout == "experts_gate_up":
                gate_HD, up_HD = (reader.read(t.format(e=e)) for t in self.hf)
                experts.append(torch.cat([gate_HD.t(), up_HD.t()], dim=-1))  # (D, 2H)
            else:
                experts.append(reader.read(self.hf[0].format(e=e)).t())  # (H, D)
        if not experts:
            return torch.empty(0, *self.kit_shape(reader)[1:])
        return torch.stack(experts)


TensorSource = Callable[[str], torch.Tensor]
"""Returns a kit tensor by its name relative to the Transformer (one at a time, for large exports)."""
