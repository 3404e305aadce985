"""Evaluation: scoring checkpoints on reasoning suites, generation, and the lm-evaluation-harness adapter."""
