import pytest

from constellation_kit.data import micro_batch_size
from constellation_kit.errors import ConfigError


def test_global_batch_divides_over_accumulation_and_devices() -> None:
    assert micro_batch_size(8192, 16, 256) == 2  # the paper's global batch on 256 GPUs
    assert micro_batch_size(16, 1, 1) == 16


def test_error_names_all_three_numbers() -> None:
    with pytest.raises(ConfigError) as error:
        micro_batch_size(100, 16, 4)
    message = str(error.value)
    assert "global_batch_size=100" in message
    assert "accumulate_grad_batches=16" in message
    assert "world_size=4" in message
