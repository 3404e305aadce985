"""In-loop suites: scores reach MLflow during fit, equal a recomputation, and shard evenly over ranks."""

from types import SimpleNamespace

import pytest
import torch

from constellation_kit.eval import CopyingSuite, MQARSuite, Scorer, ValidationSuites, evaluate_task
from constellation_kit.eval.evaluate import greedy_generate
from constellation_kit.eval.reasoning_suites import ArithmeticSuite
from constellation_kit.eval.task import MultipleChoiceItem, Task
from constellation_kit.trained_model import load_trained_model
from conftest import last_checkpoint, tracking_client

TINY_SUITES = {"copying": CopyingSuite(), "mqar": MQARSuite(), "arithmetic": ArithmeticSuite()}  # as in recipes/tiny.yaml
LIMIT = 8


def test_suite_scores_reach_mlflow_during_fit_and_are_the_checkpoints(tiny_run) -> None:
    cli, metrics = tiny_run
    trained = load_trained_model(last_checkpoint(cli))
    scorer = Scorer(trained.module, trained.tokenizer, trained.datamodule)
    history = tracking_client(cli.run_directory).get_metric_history(cli.trainer.logger.run_id, "val/copying/acc")
    # Logged by each validation: at the start (ValidateAtStart) and after the last step (Lightning's step - 1).
    assert [m.step for m in history] == [0, cli.trainer.global_step - 1]
    for name, suite in TINY_SUITES.items():
        task = suite.build().limited(LIMIT)
        expected = evaluate_task(scorer, task, greedy_generate(scorer))
        for metric in task.metrics:
            # The last validation ran after the last step: the checkpoint's weights.
            assert metrics[f"val/{name}/{metric}"] == pytest.approx(expected.metrics[metric], abs=1e-6), (name, metric)


class CountingModule(torch.nn.Module):
    """The trained module, counting forward calls and keeping what is logged through it."""

    def __init__(self, module) -> None:
        super().__init__()
        self.inner, self.forwards, self.logged = module, 0, {}

    @property
    def device(self):
        return self.inner.device

    def embedding_editor(self, batch):
        return self.inner.embedding_editor(batch)

    @property
    def encoders(self):
        return self.inner.encoders

    def forward(self, *args, **kwargs):
        self.forwards += 1
        return self.inner(*args, **kwargs)

    def log(self, name, value, **kwargs) -> None:
        self.logged[name] = float(value)


def test_ranks_run_the_same_forwards_and_their_shards_make_up_the_whole(tiny_run) -> None:
    """Under FSDP2 a rank that ran one forward fewer would hang the others: with 3 ranks and items of
    2 to 4 choices (ragged shards), every rank runs the same number; the shards' means, weighted by
    their sizes (what MeanMetric's sync computes), are the single-process score."""
    cli, _ = tiny_run
    trained = load_trained_model(last_checkpoint(cli))
    suite = CopyingSuite(num_items=10)
    task = suite.build()
    items = [MultipleChoiceItem(item.context, item.choices[: 2 + i % 3], min(item.answer, 1 + i % 3))
             for i, item in enumerate(task.items)]
    ragged = SimpleNamespace(name="ragged", build=lambda datamodule=None: Task("ragged", items, None))
    whole = evaluate_task(Scorer(trained.module, trained.tokenizer), Task("ragged", items, None), greedy_generate(None))
    forwards, weighted = [], 0.0
    for rank in range(3):
        module = CountingModule(trained.module)
        callback = ValidationSuites([ragged], limit=None, batch_size=4)
        trainer = SimpleNamespace(sanity_checking=False, datamodule=cli.datamodule, global_rank=rank, world_size=3)
        callback.on_validation_epoch_end(trainer, module)
        forwards.append(module.forwards)
        weighted += module.logged["val/ragged/acc"] * len(items[rank::3])
    assert len(set(forwards)) == 1 and forwards[0] > 0
    assert weighted / len(items) == pytest.approx(whole.metrics["acc"])
