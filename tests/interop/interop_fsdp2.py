"""The FSDP2 rank of the init_from test, in a module that does not import transformers: each spawned
process imports this module afresh, and transformers alone takes seconds to import."""

import os
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from constellation_kit.interop import load_pretrained
from constellation_kit.interop.safetensors_io import SafetensorsReader
from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, Transformer

VOCAB = 250  # not a multiple of 64: the kit pads its embedding rows, the checkpoint does not
TOKENS = torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(3))


def mixtral_network(vocab: int = VOCAB, n_kv_heads: int = 2, expert_hidden: int = 40) -> Transformer:
    """The kit network a random Mixtral of width 96, 3 layers, 6 heads over 2 KV heads, 4 experts top-2 is."""
    return Transformer(vocab, d_model=96, n_layers=3,
                       attention=partial(GroupedQueryAttention, n_heads=6, n_kv_heads=n_kv_heads, rope_base=10_000.0),
                       moe=partial(MoEFeedForward, num_experts=4, expert_hidden_dim=expert_hidden),
                       norm=partial(nn.RMSNorm, eps=1e-5))


def sharded_start(rank: int, world_size: int, port: int, directory: str, reference_loss: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        from constellation_kit.train.parallelize import materialize, parallelize

        read_bytes = 0
        original_read = SafetensorsReader.read

        def counting_read(self, name, start=None, stop=None):
            nonlocal read_bytes
            tensor = original_read(self, name, start, stop)
            read_bytes += tensor.numel() * tensor.element_size()
            return tensor

        SafetensorsReader.read = counting_read
        with torch.device("meta"):
            network = mixtral_network()
        parallelize(network, init_device_mesh("cpu", (world_size,)), param_dtype=None, reduce_dtype=None)
        materialize(network, "cpu")
        load_pretrained(network, directory)
        checkpoint_bytes = sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))
        # Each rank read its own half of every tensor, not the whole checkpoint.
        assert read_bytes < 0.6 * checkpoint_bytes, (read_bytes, checkpoint_bytes)
        network.eval()
        logits = network.logits(network(TOKENS[:, :-1]).hidden)
        loss = F.cross_entropy(logits.flatten(0, 1), TOKENS[:, 1:].flatten())
        assert abs(float(loss) - reference_loss) < 1e-5, (float(loss), reference_loss)
    finally:
        dist.destroy_process_group()
