"""The kit's own subcommands beside Lightning's fit/validate/test/predict; importing registers them."""

from constellation_kit.commands import curate, plan, tokenizer  # noqa: F401
