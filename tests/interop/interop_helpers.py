"""Shared pieces of the interop tests: small networks, a reference greedy loop, transformers loading."""

import contextlib
import io
from functools import partial

import torch
from torch import nn

from constellation_kit.cli import ConstellationCLI
from constellation_kit.commands.plan import build_model
from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, SwiGLU, Transformer
from conftest import TINY

transformers = __import__("pytest").importorskip("transformers")


def small_network(vocab: int = 320, *, moe: bool = True, tie: bool = False, qk_norm: bool = False,
                  layer_pattern: str = "G", moe_every: int = 1, n_layers: int = 3, **moe_args) -> Transformer:
    """A random kit network of odd-ish sizes whose norm scales are not all ones (so a swapped norm shows)."""
    attention = partial(GroupedQueryAttention, n_heads=6, n_kv_heads=2, qk_norm=qk_norm, layer_pattern=layer_pattern,
                        window=5, rope_base=10_000.0, local_rope_base=500.0 if "L" in layer_pattern else None)
    network = Transformer(
        vocab, d_model=96, n_layers=n_layers, attention=attention, feed_forward=partial(SwiGLU, hidden_dim=80),
        moe=partial(MoEFeedForward, num_experts=4, expert_hidden_dim=40, **moe_args) if moe else None,
        moe_every=moe_every, norm=partial(nn.RMSNorm, eps=1e-6), tie_embeddings=tie,
    )
    randomize_norms(network)
    return network.eval()


@torch.no_grad()
def randomize_norms(network: nn.Module) -> None:
    for module in network.modules():
        if isinstance(module, nn.RMSNorm):
            module.weight.normal_(1.0, 0.2)


@torch.no_grad()
def kit_logits(network: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    return network.logits(network(tokens).hidden)


@torch.no_grad()
def kit_greedy(network: Transformer, tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """The obviously-correct greedy decoder: recompute the whole prefix each step, append the argmax."""
    for _ in range(steps):
        next_token = kit_logits(network, tokens)[:, -1].argmax(dim=-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
    return tokens


def load_hf(directory) -> "transformers.PreTrainedModel":
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        return transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()


@torch.no_grad()
def hf_greedy(model, tokens: torch.Tensor, steps: int) -> torch.Tensor:
    return model.generate(tokens, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                          attention_mask=torch.ones_like(tokens))


def assert_same_function(network: Transformer, directory, vocab: int, steps: int = 8) -> None:
    """transformers' model in ``directory`` gives the kit's logits (1e-5, fp32) and its greedy tokens."""
    model = load_hf(directory)
    tokens = torch.randint(0, vocab, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, kit_logits(network, tokens), rtol=0, atol=1e-5)
    prompt = tokens[:1, :7]
    assert torch.equal(hf_greedy(model, prompt, steps), kit_greedy(network, prompt, steps))


def recipe_network(*args: str, vocab: int = 512):
    """The text network a recipe (plus overrides) builds, materialised with random weights."""
    with contextlib.redirect_stdout(io.StringIO()):
        cli = ConstellationCLI(args=["plan", f"--config={TINY}", *args, "--json=true"])
    network, _ = build_model(cli.config["plan"].model, vocab)
    network.to_empty(device="cpu")
    torch.manual_seed(0)
    network.init_weights()
    randomize_norms(network)
    return network.eval()
