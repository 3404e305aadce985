"""Conversion to and from transformers checkpoints."""
