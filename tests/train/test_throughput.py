from pathlib import Path

import pytest

from constellation_kit.cli import ConstellationCLI
from constellation_kit.model.flops import training_flops_per_token
from conftest import REPO, SMALL_DATA, TINY, tracking_client


def test_throughput_preset_logs_tokens_and_flops_from_active_parameters(in_tmp_dir: Path) -> None:
    cli = ConstellationCLI(args=[
        "fit", f"--config={TINY}", f"--config={REPO / 'callbacks' / 'throughput.yaml'}", *SMALL_DATA,
        "--trainer.max_steps=4", "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1",
        "--trainer.callbacks.init_args.window_size=2",
    ])
    network = cli.model.network
    expected = 4 * 32 * training_flops_per_token(network, 32)  # micro-batch 4 x seq_len 32
    assert cli.model.flops_per_batch == pytest.approx(expected)
    run = tracking_client().get_run(cli.trainer.logger.run_id)
    assert run.data.metrics["train/device/items_per_sec"] > 0
    assert run.data.metrics["train/device/flops_per_sec"] == pytest.approx(
        run.data.metrics["train/device/batches_per_sec"] * expected, rel=1e-3)


def test_flops_per_token_match_a_hand_count() -> None:
    """A small MoE transformer with a local and a global layer, counted by hand, matmul by matmul.

    Convention (:mod:`constellation_kit.model.flops`): 2 FLOPs per multiply-add, forward + backward
    = 3 x forward, causal attention over T / 2 keys per query (W - W^2 / 2T in a W-token window),
    the embedding lookup free, norm gains counted like any parameter (PaLM's 6N).
    """
    from functools import partial

    from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, SwiGLU, TopKRouter, Transformer

    d, heads, kv_heads, head_dim, window, seq_len, vocab = 16, 4, 2, 4, 4, 16, 64
    network = Transformer(
        vocab, d_model=d, n_layers=2,
        attention=partial(GroupedQueryAttention, n_heads=heads, n_kv_heads=kv_heads, layer_pattern="LG", window=window),
        feed_forward=partial(SwiGLU, hidden_dim=32),
        moe=partial(MoEFeedForward, num_experts=4, expert_hidden_dim=8, num_shared_experts=1,
                    router=partial(TopKRouter, top_k=2)),
        moe_every=2,  # block 0 dense, block 1 MoE
    )
    # Multiply-adds per token, forward:
    projections = d * heads * head_dim + d * 2 * kv_heads * head_dim + heads * head_dim * d  # q, kv, out: 768
    local_context = window - window**2 / (2 * seq_len)  # 3.5 keys on average in block 0's 4-token window
    global_context = seq_len / 2  # 8 keys on average in block 1
    scores_and_values = 2 * heads * head_dim * (local_context + global_context)  # QK^T and AV, every query head
    dense_ffn = d * 2 * 32 + 32 * d  # gate+up, down: 1536
    expert = d * 2 * 8 + 8 * d  # one SwiGLU expert of width 8: 384
    moe = d * 4 + 2 * expert + expert  # router, the 2 chosen of 4 experts, the shared expert: 1216
    head = d * vocab  # untied LM head: 1024
    norm_gains = 5 * d  # 2 per block + final norm
    forward_macs = 2 * projections + scores_and_values + dense_ffn + moe + head + norm_gains
    assert forward_macs == 5760  # = 11,520 forward FLOPs per token
    assert training_flops_per_token(network, seq_len) == 3 * 2 * forward_macs  # 34,560


def test_the_window_formula_meets_the_global_one_where_the_window_covers_the_sequence() -> None:
    from constellation_kit.model import GroupedQueryAttention

    local = GroupedQueryAttention(16, n_heads=4, layer_pattern="L", window=32)
    assert local.attended_context(32) == 32 / 2 == 32 - 32**2 / (2 * 32)  # W = T: both give T / 2
    assert local.attended_context(64) == 32 - 32**2 / (2 * 64) == 24  # 24 keys, not a global layer's 32
