"""The kit's own subcommands beside Lightning's fit/validate/test/predict; importing registers them."""

from constellation_kit.commands import plan  # noqa: F401
from constellation_kit.commands import export  # noqa: F401
from constellation_kit.commands import compare  # noqa: F401
from constellation_kit.commands import curate, tokenizer  # noqa: F401
from constellation_kit.commands import generate  # noqa: F401
from constellation_kit.commands import eval  # noqa: F401
