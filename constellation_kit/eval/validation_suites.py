"""In-loop validation on reasoning suites: each task's scores logged as ``val/<task>/<metric>`` after every validation."""

import logging
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import MeanMetric

from constellation_kit.errors import ConfigError
from constellation_kit.eval.evaluate import greedy_generate, item_scores
from constellation_kit.eval.scoring import Scorer
from constellation_kit.eval.task import EvalSuite, MultipleChoiceItem, Task

log = logging.getLogger(__name__)


class ValidationSuites(Callback):
    """Scores ``suites`` at the end of every validation and logs ``val/<task>/acc`` and ``val/<task>/acc_norm``
    (multiple choice) or ``val/<task>/exact_match`` (generation), besides the held-out loss.

    Each rank scores every ``world_size``-th item; a torchmetrics :class:`~torchmetrics.MeanMetric` per
    task and metric sums the scores over ranks, so the logged value is the mean over all items at
    any world size. Every rank runs the same number of forward calls (its requests padded to the
    largest rank's), which FSDP2 needs: each forward all-gathers parameters on every rank.
    Generation items decode greedily for a fixed number of tokens (no cache, no early stop).

    Args:
        suites: the tasks, each named by ``class_path`` (e.g. :class:`~constellation_kit.eval.MQARSuite`).
        limit: score at most this many items per task (the first ones, the same every time).
        batch_size: rows per forward call.
    """

    def __init__(self, suites: list[EvalSuite], limit: int | None = 32, batch_size: int = 16) -> None:
        names = [s.name for s in suites]
        if len(set(names)) != len(names):
            raise ConfigError(f"ValidationSuites names a task twice: {names}; give each suite a different setting")
        self.suites, self.limit, self.batch_size = suites, limit, batch_size
        self._tasks: list[Task] | None = None
        self._metrics: dict[str, MeanMetric] = {}

    def tasks(self, datamodule: Any) -> list[Task]:
        """The suites' tasks, built once (they are deterministic) and cut to ``limit``."""
        if self._tasks is None:
            self._tasks = [suite.build(datamodule).limited(self.limit) for suite in self.suites]
        return self._tasks

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        started = time.perf_counter()
        datamodule = trainer.datamodule
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("ValidationSuites needs a data module with a tokenizer (text suites are scored as text)")
        scorer = Scorer(pl_module, tokenizer, datamodule, batch_size=self.batch_size)
        rank, world = trainer.global_rank, trainer.world_size
        with torch.no_grad():
            for task in self.tasks(datamodule):
                shards = [task.items[r::world] for r in range(world)]
                if isinstance(task.items[0], MultipleChoiceItem):
                    pad = max(sum(len(item.choices) for item in shard) for shard in shards)
                    longest = None
                else:
                    pad = max(len(shard) for shard in shards)
                    longest = max(item.max_new_tokens for item in task.items)
                mine = shards[rank]
                scores = item_scores(scorer, mine, greedy_generate(scorer), pad_requests_to=pad, max_new_tokens=longest)
                for metric in task.metrics:
                    self._log(pl_module, f"val/{task.name}/{metric}", scores.get(metric, []))
        log.info("validation suites scored in %.1f s", time.perf_counter() - started)

    def _log(self, pl_module: LightningModule, name: str, values: list[float]) -> None:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = MeanMetric()
        metric = metric.to(pl_module.device)
        # A rank without items (more ranks than items) adds nothing, but still joins compute()'s gather.
        if values:
            metric.update(torch.tensor(values, device=pl_module.device))
        else:
            metric.update(torch.zeros(1, device=pl_module.device), weight=0.0)
        value = metric.compute()  # sums value and weight over ranks: the mean over all items
        metric.reset()
        pl_module.log(name, value, sync_dist=False)
