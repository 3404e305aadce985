"""constellation-kit: a Lightning recipe kit for sparse multimodal foundation models."""

__version__ = "0.1.0"
