"""A bad recipe value stops the console script at startup with one line naming it and the fix.

Each case goes through the real entry point (:func:`constellation_kit.cli.main`) on the tiny recipe
and must exit with status 2 and a ``constellation-kit: error:`` line, never a traceback. All fail
before the trainer runs anything, so each costs one parse and instantiation.
"""

import re
from pathlib import Path

import pytest

from constellation_kit.cli import main
from constellation_kit.errors import ConfigError
from constellation_kit.model import GroupedMMDispatch, GroupedQueryAttention, MoEFeedForward, TopKRouter
from conftest import SMALL_DATA, TINY

NETWORK = "--model.init_args.network.init_args."
ATTENTION = NETWORK + "attention.init_args."
MOE = NETWORK + "moe.init_args."

CASES = {
    # name: (overrides, fragments the one-line message must contain)
    "zero_heads": ([ATTENTION + "n_heads=0"], ["n_heads=0", "must be at least 1"]),
    # d_model 12 over 4 heads: head dimension 3, which RoPE cannot pair up.
    "odd_head_dim": ([NETWORK + "d_model=12"], ["head dimension 3", "must be even", "RoPE"]),
    "zero_capacity_factor": ([MOE + "dispatch.init_args.capacity_factor=0"], ["capacity_factor=0", "null for dropless"]),
    "moe_every_past_depth": ([NETWORK + "moe_every=5"], ["moe_every=5", "n_layers=3", "no block would be MoE"]),
    "image_tokens_mismatch": (["--data.init_args.image_tokens=8"],
                              ["image_tokens=8", "vision_encoder's num_tokens=16", "same value"]),
    "audio_tokens_mismatch": (["--model.init_args.audio_encoder.init_args.num_tokens=8"],
                              ["audio_tokens=4", "audio_encoder's num_tokens=8", "same value"]),
    # jsonargparse instantiates the dataclass and wraps its error: the CLI must still show one line.
    "rope_factor_below_one": ([ATTENTION + "rope_scaling.kind=linear", ATTENTION + "rope_scaling.factor=0.5"],
                              ["factor=0.5", ">= 1"]),
}
"""Through the console script: the issue's cases, and one of each path a message takes to the user
(built in ``check_config``, wrapped by jsonargparse, compared across data and model in the CLI)."""

AT_THE_CONSTRUCTOR = {
    # The other bad values a recipe can reach (the first four were already clear) and the variants
    # of the cases above: checked at the constructor (milliseconds), since the CLI path each takes
    # to the user is covered above.
    "kv_heads_not_dividing": (lambda: GroupedQueryAttention(32, n_heads=4, n_kv_heads=3),
                              "n_heads=4 is not divisible by n_kv_heads=3"),
    "top_k_over_experts": (lambda: TopKRouter(32, 8, top_k=9), "top_k=9 must be between 1 and num_experts=8"),
    "zero_window": (lambda: GroupedQueryAttention(32, n_heads=4, layer_pattern="L", window=0), "window=0"),
    "zero_experts": (lambda: MoEFeedForward(32, num_experts=0), "num_experts=0"),
    "negative_capacity_factor": (lambda: GroupedMMDispatch(capacity_factor=-1), "capacity_factor=-1"),
    "odd_explicit_head_dim": (lambda: GroupedQueryAttention(32, n_heads=4, head_dim=33), "head dimension 33"),
    "zero_kv_heads": (lambda: GroupedQueryAttention(32, n_heads=4, n_kv_heads=0), "n_kv_heads=0"),
}


@pytest.mark.parametrize("build,fragment", AT_THE_CONSTRUCTOR.values(), ids=AT_THE_CONSTRUCTOR.keys())
def test_other_reachable_bad_values_are_config_errors(build, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        build()
