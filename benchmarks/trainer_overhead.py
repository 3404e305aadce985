"""Trainer overhead: `constellation-kit fit` against a plain PyTorch loop doing the same maths, step by step.

    python benchmarks/trainer_overhead.py [--repeats 3] [--warmup 10] [--window 80] [--threads N] [--workdir DIR]

**fit** is the real CLI path, run in this process: :class:`~constellation_kit.cli.ConstellationCLI`
parses ``fit --config recipes/tiny.yaml --config callbacks/default.yaml`` (so base.yaml's balance
terms, AdamW, warmup-cosine schedule, gradient clipping, MLflow logger with system metrics, progress
bar, KeepFreedMemory and ValidateAtStart; tiny.yaml's ValidationSuites and ModelCheckpoint;
default.yaml's LearningRateMonitor, ThroughputMonitor and ExpertLoadHeatmap; and the CLI's own
RNGStateCheckpoint and TokenizerInCheckpoint), with tiny's network under the text-only
:class:`~constellation_kit.train.LanguageModel` and the data as a
:class:`~constellation_kit.data.TextDataModule` (tiny's source, tokenizer, seq_len and batch). The only
additions are one callback, :class:`SideBySide`, last in the list, and ``--trainer.limit_val_batches`` /
``--trainer.val_check_interval`` so that validation runs at the start and at the end only.

**raw** is :class:`RawLoop`: the same network class and config, started from the *same initial
weights* as fit, fed by a ``DataLoader`` from a second instance of the same data module (so the same
batches in the same order, loaded live at each step as fit loads them), in fp32 (``precision:
32-true``, as tiny runs). Per step it does exactly:

1. ``hidden, aux = network(tokens, SequenceLayout.from_document_ids(document_ids))``;
2. ``loss = cross_entropy(network.logits(hidden[scored]) in fp32, targets[scored])`` with
   ``scored = targets != -100`` (the kit's training loss on a CPU: only scored positions reach the head)
   ``+ Σ coefficient · piece.value(routing)`` over base.yaml's balance pieces (Switch balance,
   router z-loss, router L2), on every MoE layer's router output;
3. ``optimizer.zero_grad(); loss.backward()``;
4. ``clip_grad_norm_(parameters, gradient_clip_val)`` (base.yaml clips at 1.0);
5. ``optimizer.step(); scheduler.step()`` with the recipe's AdamW over the kit's weight-decay groups
   and its WarmupCosineSchedule over the same total steps.

It logs nothing, calls no callback and never syncs, except that it keeps each step's loss tensor.

**Side by side, step by step.** :class:`SideBySide` runs one raw step inside each of fit's
``on_train_batch_end``: fit's step *k* is the time from the end of raw step *k − 1* to the start of
raw step *k* (Lightning's loop, data fetch, hooks, every other callback and the step itself), raw's
is the raw step. So both arms see the same machine within a quarter of a second, and drift in its
speed cancels. Runs that alternated (fit, raw, raw, fit...) could not resolve a 3% overhead here: one
arm's tokens/s moved by up to 30% between runs on this shared 2-core host (``RESULTS.md``,
issue 15). The cost of the design: each arm's step starts with the other's working set in the caches,
for both alike. The two share the process and so its allocator policy (KeepFreedMemory, which fit
sets up): the ratio is the trainer's overhead, not the allocator's.

tokens/s of each arm is measured over steps ``warmup + 1 .. warmup + window`` (validation, which
runs inside fit's first and last steps, and checkpoints fall outside it); the figure is the median
over ``--repeats`` runs of fit/raw tokens/s. As a check that the two do the same work, every step's
loss is compared: equal, the same float32 ops in the same order, the clipping norm summed over the
optimizer's parameters as Lightning does.

The last line printed is one JSON object.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's kit
    sys.path.insert(0, str(REPO))

from constellation_kit.cli import ConstellationCLI  # noqa: E402
from constellation_kit.data.packing import IGNORE_INDEX  # noqa: E402
from constellation_kit.model.balance import BalanceLoss  # noqa: E402
from constellation_kit.model.layout import SequenceLayout  # noqa: E402
from constellation_kit.model.router import RouterOutput  # noqa: E402
from constellation_kit.train.moe_terms import BALANCE_KEY  # noqa: E402
from constellation_kit.train.param_groups import weight_decay_groups  # noqa: E402

TEXT_MODEL = [
    "--config", str(REPO / "recipes" / "tiny.yaml"),
    "--config", str(REPO / "callbacks" / "default.yaml"),
    "--model", "constellation_kit.train.LanguageModel",   # tiny's network, no encoders
    "--data", "constellation_kit.data.TextDataModule",    # tiny's text source, tokenizer, seq_len, batch
    "--trainer.logger.init_args.experiment_name=trainer-overhead",
]
"""The recipe both sides run: tiny's network and text data, with the standard callbacks."""


class RawLoop:
    """The module docstring's plain PyTorch loop over ``network``, one :meth:`step` at a time."""

    def __init__(
        self,
        network: torch.nn.Module,
        optimizer_factory: Callable[[Iterable], torch.optim.Optimizer],
        scheduler_factory: Callable[[torch.optim.Optimizer, int], Any],
        balance: Sequence[BalanceLoss],
        batches: Iterable[dict[str, torch.Tensor]],
        total_steps: int,
        clip_norm: float | None,
    ) -> None:
        self.network = network.train()
        self.optimizer = optimizer_factory(weight_decay_groups(network))
        self.scheduler = scheduler_factory(self.optimizer, total_steps)
        self.balance = balance
        self.batches = iter(batches)
        self.clip_norm = clip_norm
        # Clipped in the optimizer's order, as Lightning clips: the total norm's float summation order then
        # matches fit's (in the network's order the losses drifted apart by ~1e-4 by step 50).
        self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]

    def step(self) -> tuple[torch.Tensor, int]:
        """One optimizer step on the next batch: its loss (a tensor, not synced) and its tokens."""
        batch = next(self.batches)
        network = self.network
        output = network(batch["tokens"], SequenceLayout.from_document_ids(batch["document_ids"]))
        scored = batch["targets"] != IGNORE_INDEX  # (B, T)
        logits = network.logits(output.hidden[scored])  # (n, V)
        loss = F.cross_entropy(logits.float(), batch["targets"][scored])
        routing = [(index, aux) for index, aux in output.aux if isinstance(aux, RouterOutput)]
        # The balance terms summed first, then added: fit's association, so the float sums round alike.
        loss = loss + sum(piece.coefficient * piece.value(routing) for piece in self.balance)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), batch["tokens"].numel()


class SideBySide(Callback):
    """Runs one :class:`RawLoop` step after each of fit's training batches and times both arms.

    The raw network takes fit's weights as training starts. Per step it keeps the wall and process
    CPU seconds of each arm (``fit_seconds``, ``raw_seconds``: ``(wall, cpu)`` pairs; fit's first
    step has none, its start being Lightning's), both losses, the tokens, and fit's balance values
    from the step's outputs. Put it last among the callbacks: those after it (Lightning moves
    ModelCheckpoint there) are timed as part of fit's next step, which they are.
    """

    def __init__(self, raw: RawLoop) -> None:
        self.raw = raw
        self.fit_seconds: list[tuple[float, float]] = []
        self.raw_seconds: list[tuple[float, float]] = []
        self.fit_losses: list[torch.Tensor] = []
        self.raw_losses: list[torch.Tensor] = []
        self.tokens: list[int] = []
        self.balance: list[dict[str, torch.Tensor]] = []
        self._raw_done: tuple[float, float] | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.raw.network.load_state_dict(pl_module.network.state_dict())

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        fit_done = clock()
        if self._raw_done is not None:
            self.fit_seconds.append(elapsed(self._raw_done, fit_done))
        self.tokens.append(batch["tokens"].numel())
        self.fit_losses.append(outputs["loss"].detach() if isinstance(outputs, dict) else outputs.detach())
        self.balance.append(dict(outputs.get(BALANCE_KEY, {})) if isinstance(outputs, dict) else {})
        loss, tokens = self.raw.step()
        self._raw_done = clock()
        self.raw_seconds.append(elapsed(fit_done, self._raw_done))
        self.raw_losses.append(loss)
        if tokens != self.tokens[-1]:
            raise RuntimeError(f"step {batch_idx}: fit's batch has {self.tokens[-1]} tokens, raw's {tokens}")


class _SideBySideCLI(ConstellationCLI):
    """The kit's CLI with a :class:`SideBySide` callback appended to the trainer's callbacks."""

    def __init__(self, side_by_side: SideBySide, **kwargs: Any) -> None:
        self.side_by_side = side_by_side
        super().__init__(**kwargs)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        return super()._instantiate_trainer(config, [*callbacks, self.side_by_side])


class _ConfigOnlyCLI(ConstellationCLI):
    """The kit's CLI, parsing and instantiating ``fit``'s classes without running it."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def fit_args(total_steps: int, extra: Sequence[str] = ()) -> list[str]:
    """``fit`` arguments for a run of ``total_steps``: validation only at the start and at the end."""
    return [
        "fit", *TEXT_MODEL,
        f"--trainer.max_steps={total_steps}",
        f"--trainer.val_check_interval={total_steps}",
        "--trainer.limit_val_batches=2",
        *extra,
    ]


def build_raw_loop(total_steps: int, extra: Sequence[str] = ()) -> RawLoop:
    """The raw loop over the recipe's network, optimizer, schedule, balance pieces, clipping and batches.

    Built from the classes the CLI instantiates from the same recipe (not run): the network factory,
    vocabulary, optimizer and scheduler factories, balance pieces, the trainer's ``gradient_clip_val``
    and the data module's loader.
    """
    cli = _ConfigOnlyCLI(args=fit_args(total_steps, extra))
    module, datamodule = cli.model, cli.datamodule
    if cli.trainer.gradient_clip_algorithm not in (None, "norm"):
        raise ValueError(f"the raw loop clips by norm; the recipe clips by {cli.trainer.gradient_clip_algorithm}")
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(0)  # as Lightning's fit loop does at the start of epoch 0
    return RawLoop(module.network_factory(module.vocab_size), module.optimizer_factory, module.scheduler_factory,
                   module.balance, loader, total_steps, cli.trainer.gradient_clip_val)


def run_side_by_side(total_steps: int, extra: Sequence[str] = ()) -> "_SideBySideCLI":
    """One ``constellation-kit fit`` of ``total_steps`` in this process (the working directory holds runs/ and
    mlflow.db) with a raw step after each of its steps; its ``side_by_side`` holds the timings and losses.

    The raw loop is built first, so that its network's initialisation and its loader draw from the
    global RNG before fit seeds it: fit runs exactly as it would alone.
    """
    return _SideBySideCLI(SideBySide(build_raw_loop(total_steps, extra)), args=fit_args(total_steps, extra))


def tokens_per_second(seconds: Sequence[float], tokens: Sequence[int]) -> float:
    return sum(tokens) / sum(seconds)


def clock() -> tuple[float, float]:
    """Wall time and this process's CPU time (all threads), in seconds."""
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    return end[0] - start[0], end[1] - start[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fit runs, each with the raw loop side by side")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--window", type=int, default=80, help="steps timed")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where runs/ and mlflow.db go (default: a temp dir)")
    args, extra = parser.parse_known_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trainer-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    # Two steps after the window: the end-of-run checkpoint and validation stay out of it.
    total = args.warmup + args.window + 2
    # fit_seconds[k] is fit's step k + 1 (its step 0 has no start of ours); raw_seconds[k] is step k.
    window = slice(args.warmup + 1, args.warmup + args.window + 1)

    runs = []
    for repeat in range(args.repeats):
        load = os.getloadavg()[0]
        run = run_side_by_side(total, extra).side_by_side
        tokens = run.tokens[window]
        timed = {"fit": run.fit_seconds[window.start - 1: window.stop - 1], "raw": run.raw_seconds[window]}
        rate = {arm: {kind: tokens_per_second([s[m] for s in seconds], tokens)
                      for m, kind in enumerate(("wall", "cpu"))}
                for arm, seconds in timed.items()}
        equal = sum(bool(a == b) for a, b in zip(run.fit_losses, run.raw_losses, strict=True))
        runs.append({"rate": rate, "ratio": rate["fit"]["wall"] / rate["raw"]["wall"],
                     "ratio_cpu": rate["fit"]["cpu"] / rate["raw"]["cpu"],
                     "equal_losses": equal, "steps": len(run.fit_losses),
                     "last_loss": float(run.fit_losses[window.stop - 1])})
        print(f"run {repeat + 1}: fit {rate['fit']['wall']:7.0f} tokens/s, raw {rate['raw']['wall']:7.0f} tokens/s, "
              f"fit/raw {runs[-1]['ratio']:.3f} (per CPU-second {runs[-1]['ratio_cpu']:.3f}); "
              f"steps {window.start}-{window.stop - 1}; losses equal at {equal} of {len(run.fit_losses)} steps"
              f"  (load {load:.2f})", flush=True)

    ratio = statistics.median(r["ratio"] for r in runs)
    ratio_cpu = statistics.median(r["ratio_cpu"] for r in runs)
    print(f"\nfit/raw tokens/s, median of {len(runs)} runs: {ratio:.3f} (per CPU-second: {ratio_cpu:.3f})")
    print(json.dumps({
        "ratio_fit_over_raw": round(ratio, 4),
        "ratio_fit_over_raw_cpu": round(ratio_cpu, 4),
        "ratios": [round(r["ratio"], 4) for r in runs],
        "fit_tokens_per_s": [round(r["rate"]["fit"]["wall"]) for r in runs],
        "raw_tokens_per_s": [round(r["rate"]["raw"]["wall"]) for r in runs],
        "losses_equal": all(r["equal_losses"] == r["steps"] for r in runs),
        "loss_at_window_end": round(runs[0]["last_loss"], 6),
        "warmup_steps": args.warmup,
        "window_steps": args.window,
        "load_average_end": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
