"""The auxiliary-loss-free bias balancer: its update rule, its effect, and its timing under accumulation."""

import functools

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from constellation_kit.callbacks import AuxLossFreeBalancer
from constellation_kit.model import GroupedQueryAttention, MoEFeedForward, TopKRouter, Transformer
from constellation_kit.train import LanguageModel
from constellation_kit.train.moe_callbacks import bias_update, expert_biases
from constellation_kit.train.moe_terms import load_statistics


def test_bias_update_is_gamma_times_sign_of_mean_minus_load() -> None:
    counts_LE = torch.tensor([[6, 2, 4, 4], [1, 1, 1, 1]])
    expected = torch.tensor([[-1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]) * 1e-3
    torch.testing.assert_close(bias_update(counts_LE, 1e-3), expected)


def test_bias_drives_maxvio_down_on_a_skewed_router() -> None:
    torch.manual_seed(0)
    router = TopKRouter(16, 8, top_k=2, init_std=0.1)
    with torch.no_grad():
        router.weight[0] += 0.15  # expert 0 favoured: inputs have a positive mean feature
    x = torch.randn(1024, 16) + 0.5
    history = []
    for _ in range(60):
        counts_E = router(x).tokens_per_expert_E
        history.append(load_statistics(counts_E[None])["maxvio"].item())
        with torch.no_grad():
            router.expert_bias += bias_update(counts_E[None], 0.005)[0]
    assert history[0] > 2.0  # expert 0 takes most token copies
    # The sign update settles into a small oscillation around balance: judge its last 10 steps.
    assert max(history[-10:]) < 0.25
    assert router.expert_bias[0] < 0 and router.weight.grad is None


def tiny_language_model() -> LanguageModel:
    network = functools.partial(
        Transformer,
        d_model=16,
        n_layers=2,
        attention=functools.partial(GroupedQueryAttention, n_heads=2),
        moe=functools.partial(MoEFeedForward, num_experts=4, expert_hidden_dim=8),
    )
    model = LanguageModel(network=network, vocab_size=32)
    torch.manual_seed(0)
    model.configure_model()
    return model


def batches(num_sequences: int, micro_batch: int) -> DataLoader:
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 32, (num_sequences, 9), generator=generator)
    rows = [
        {"tokens": t[:-1], "targets": t[1:], "document_ids": torch.zeros(8, dtype=torch.long)} for t in tokens
    ]
    return DataLoader(rows, batch_size=micro_batch, shuffle=False)


def biases_after_one_step(micro_batch: int, accumulate: int) -> list[torch.Tensor]:
    model = tiny_language_model()
    trainer = Trainer(
        max_steps=1, accumulate_grad_batches=accumulate, callbacks=[AuxLossFreeBalancer(update_rate=1e-3)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", devices=1, limit_val_batches=0,
    )
    trainer.fit(model, train_dataloaders=batches(8, micro_batch))
    return [b.clone() for b in expert_biases(model)]


def test_bias_update_is_the_same_with_and_without_gradient_accumulation() -> None:
    # The counts the update must use: the whole global batch through the initial weights.
    model = tiny_language_model()
    batch = next(iter(batches(8, 8)))
    with torch.no_grad():
        aux = model._network_output(batch).aux
    expected = bias_update(torch.stack([r.tokens_per_expert_E for _, r in aux]), 1e-3)

    whole = biases_after_one_step(micro_batch=8, accumulate=1)
    accumulated = biases_after_one_step(micro_batch=2, accumulate=4)
    assert torch.count_nonzero(torch.stack(whole)) > 0
    for layer, (a, b) in enumerate(zip(whole, accumulated, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, expected[layer], rtol=0, atol=0)  # one update, from all 8 sequences


def test_balancer_without_routers_is_a_config_error() -> None:
    from constellation_kit.errors import ConfigError

    model = LanguageModel(network=functools.partial(Transformer, d_model=16, n_layers=1,
                                                    attention=functools.partial(GroupedQueryAttention, n_heads=2)),
                          vocab_size=32)
    trainer = Trainer(max_steps=1, callbacks=[AuxLossFreeBalancer()], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    with pytest.raises(ConfigError, match="no router"):
        trainer.fit(model, train_dataloaders=batches(4, 4))
