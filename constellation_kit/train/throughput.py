"""Batch measures for Lightning's ThroughputMonitor, named by import path in callbacks/throughput.yaml."""

import torch


def sequences_in_batch(batch: dict[str, torch.Tensor]) -> int:
    """Sequences in a packed batch: its first dimension."""
    return int(batch["tokens"].shape[0])


def tokens_in_batch(batch: dict[str, torch.Tensor]) -> int:
    """Tokens in a packed batch (sequences x length)."""
    return int(batch["tokens"].numel())
