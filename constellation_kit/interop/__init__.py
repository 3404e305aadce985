"""Conversion to and from transformers checkpoints: export a trained text network, start one from pretrained weights.

- :func:`export_network` / :func:`export_checkpoint`: a kit network (or a ``fit`` checkpoint, single
  file or sharded) as a directory ``AutoModelForCausalLM.from_pretrained`` loads with no custom code.
- :func:`load_pretrained`: fill a kit network (plain, or FSDP2-sharded) from such a directory; what
  ``init_from:`` in a recipe calls.
- :func:`load_whisper_encoder` / :func:`clip_vision_to_timm`: pretrained encoders for
  :class:`~constellation_kit.model.AudioEncoder` and :class:`~constellation_kit.model.TimmVisionEncoder`.

Which transformers class a network maps to is decided by :mod:`constellation_kit.interop.families`.
"""

from constellation_kit.interop.export import export_checkpoint, export_network
from constellation_kit.interop.families import FAMILIES, Family, choose_family
from constellation_kit.interop.init_from import load_pretrained
from constellation_kit.interop.safetensors_io import SafetensorsReader, write_sharded
from constellation_kit.interop.spec import NetworkSpec, describe

__all__ = [
    "FAMILIES",
    "Family",
    "NetworkSpec",
    "SafetensorsReader",
    "choose_family",
    "describe",
    "export_checkpoint",
    "export_network",
    "load_pretrained",
    "write_sharded",
]
