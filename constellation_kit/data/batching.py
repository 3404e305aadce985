"""How a global batch splits into micro-batches over gradient accumulation and devices."""

from constellation_kit.errors import ConfigError


def micro_batch_size(global_batch_size: int, accumulate_grad_batches: int, world_size: int) -> int:
    """Sequences per device per forward pass: ``global ÷ (accumulation × world size)``.

    The recipe fixes the global batch (what the optimizer sees, what the paper reports) so that
    the same recipe means the same training on 8 GPUs or 512; the per-device batch follows.
    """
    divisor = accumulate_grad_batches * world_size
    if global_batch_size < 1 or divisor < 1 or global_batch_size % divisor:
        raise ConfigError(
            f"global_batch_size={global_batch_size} is not divisible by accumulate_grad_batches="
            f"{accumulate_grad_batches} x world_size={world_size} (= {divisor}): set "
            "data.init_args.global_batch_size to a multiple of that product, or change "
            "trainer.accumulate_grad_batches or the number of devices/nodes"
        )
    return global_batch_size // divisor
