"""Trainer overhead: `constellation-kit fit` against a plain PyTorch loop doing the same maths, side by side.

    python benchmarks/trainer_overhead.py [--repeats 3] [--warmup 10] [--window 40] [--workdir DIR]

**fit** is the real CLI path, run in this process: :class:`~constellation_kit.cli.ConstellationCLI`
parses ``fit --config recipes/tiny.yaml --config callbacks/default.yaml`` (so base.yaml's balance
terms, AdamW, warmup-cosine schedule, gradient clipping, MLflow logger with system metrics, progress
bar and ValidateAtStart; tiny.yaml's ValidationSuites and ModelCheckpoint; default.yaml's
LearningRateMonitor, ThroughputMonitor and ExpertLoadHeatmap; and the CLI's own RNGStateCheckpoint
and TokenizerInCheckpoint), with tiny's network under the text-only
:class:`~constellation_kit.train.LanguageModel` and the data as a
:class:`~constellation_kit.data.TextDataModule` (tiny's source, tokenizer, seq_len and batch). The only
additions are a :class:`StepClock` callback, which stores a timestamp and the loss tensor at each
``on_train_batch_end`` (no host sync), and ``--trainer.limit_val_batches`` /
``--trainer.val_check_interval`` so that validation runs at the start and at the end only.

**raw** is :func:`raw_training_loop`: the same network class and config, started from the *same
initial weights* as fit (captured by StepClock), fed by a ``DataLoader`` from a fresh instance of the
same data module (so the same batches in the same order, loaded live at each step as fit loads them),
in fp32 (``precision: 32-true``, as tiny runs). Per step it does exactly:

1. ``hidden, aux = network(tokens, SequenceLayout.from_document_ids(document_ids))``;
2. ``loss = cross_entropy(network.logits(hidden[scored]) in fp32, targets[scored])`` with
   ``scored = targets != -100`` (the kit's training loss on a CPU: only scored positions reach the head)
   ``+ Σ coefficient · piece.value(routing)`` over base.yaml's balance pieces (Switch balance,
   router z-loss, router L2), on every MoE layer's router output;
3. ``optimizer.zero_grad(); loss.backward()``;
4. ``clip_grad_norm_(parameters, gradient_clip_val)`` (base.yaml clips at 1.0);
5. ``optimizer.step(); scheduler.step()`` with the recipe's AdamW over the kit's weight-decay groups
   and its WarmupCosineSchedule over the same total steps.

It logs nothing, calls no callback and never syncs, except that it stores each step's loss tensor.

Timing excludes start-up: both record ``time.perf_counter()`` at the end of each step, and tokens/s
is measured over steps ``warmup .. warmup + window`` (validation and checkpoints fall outside it).
fit and raw alternate (fit raw raw fit fit raw ...) so that drift in machine load hits both; the
ratio of the medians of fit/raw tokens/s is the figure. As a check that the two do the same work,
the JSON also carries both losses at the last step of the window (equal: the same float32 ops in the
same order, the clipping norm summed over the optimizer's parameters as Lightning does).

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


class StepClock(Callback):
    """Records the time, the step's loss (a tensor, never synced) and its balance values after every training batch.

    Also keeps a copy of the network's weights as training starts, so a raw loop can start from them.
    """

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []
        self.losses: list[torch.Tensor] = []
        self.tokens: list[int] = []
        self.balance: list[dict[str, torch.Tensor]] = []
        self.initial_state: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.initial_state = {k: v.detach().clone() for k, v in pl_module.network.state_dict().items()}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.times.append(clock())
        self.tokens.append(batch["tokens"].numel())
        self.losses.append(outputs["loss"].detach() if isinstance(outputs, dict) else outputs.detach())
        self.balance.append(dict(outputs.get(BALANCE_KEY, {})) if isinstance(outputs, dict) else {})


class _ClockedCLI(ConstellationCLI):
    """The kit's CLI with one :class:`StepClock` appended to the trainer's callbacks."""

    clock: StepClock

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        self.clock = StepClock()
        return super()._instantiate_trainer(config, [*callbacks, self.clock])


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


def run_fit(total_steps: int, extra: Sequence[str] = ()) -> _ClockedCLI:
    """One ``constellation-kit fit`` in this process (the working directory holds runs/ and mlflow.db);
    its ``clock`` holds the timings."""
    return _ClockedCLI(args=fit_args(total_steps, extra))


def build_raw_parts(total_steps: int, extra: Sequence[str] = ()) -> tuple[Any, Any]:
    """The LightningModule and data module as the CLI instantiates them from the same recipe, not run.

    The raw loop takes only factories and settings from them: the network factory, vocabulary,
    optimizer and scheduler factories, balance pieces, and the data module's loader.
    """
    cli = _ConfigOnlyCLI(args=fit_args(total_steps, extra))
    return cli.model, cli.datamodule


def raw_training_loop(
    network: torch.nn.Module,
    optimizer_factory: Callable[[Iterable], torch.optim.Optimizer],
    scheduler_factory: Callable[[torch.optim.Optimizer, int], Any],
    balance: Sequence[BalanceLoss],
    batches: Iterable[dict[str, torch.Tensor]],
    total_steps: int,
    steps: int,
    clip_norm: float | None,
) -> tuple[list[tuple[float, float]], list[int], list[torch.Tensor]]:
    """Train ``network`` for ``steps`` optimizer steps: timestamps, tokens and loss tensors, per step.

    The maths is the module docstring's list, no more.
    """
    network.train()
    optimizer = optimizer_factory(weight_decay_groups(network))
    scheduler = scheduler_factory(optimizer, total_steps)
    # Clipped in the optimizer's order, as Lightning clips: the total norm's float summation order then
    # matches fit's (in the network's order the losses drifted apart by ~1e-4 by step 50).
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    times, tokens, losses = [], [], []
    for _, batch in zip(range(steps), batches):
        output = network(batch["tokens"], SequenceLayout.from_document_ids(batch["document_ids"]))
        scored = batch["targets"] != IGNORE_INDEX  # (B, T)
        logits = network.logits(output.hidden[scored])  # (n, V)
        loss = F.cross_entropy(logits.float(), batch["targets"][scored])
        routing = [(index, aux) for index, aux in output.aux if isinstance(aux, RouterOutput)]
        # The balance terms summed first, then added: fit's association, so the float sums round alike.
        loss = loss + sum(piece.coefficient * piece.value(routing) for piece in balance)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
        optimizer.step()
        scheduler.step()
        times.append(clock())
        tokens.append(batch["tokens"].numel())
        losses.append(loss.detach())
    return times, tokens, losses


def run_raw(total_steps: int, initial_state: dict[str, torch.Tensor], extra: Sequence[str] = (),
            clip_norm: float | None = 1.0) -> tuple[list[tuple[float, float]], list[int], list[torch.Tensor]]:
    """The raw loop over the recipe's network, optimizer, schedule, balance pieces and batches."""
    module, datamodule = build_raw_parts(total_steps, extra)
    network = module.network_factory(module.vocab_size)
    network.load_state_dict(initial_state)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(0)  # as Lightning's fit loop does at the start of epoch 0
    return raw_training_loop(network, module.optimizer_factory, module.scheduler_factory, module.balance,
                             loader, total_steps, total_steps, clip_norm)


def tokens_per_second(times: Sequence[float], tokens: Sequence[int], warmup: int, window: int) -> float:
    """Tokens of steps ``warmup+1 .. warmup+window`` over the time from the end of step ``warmup`` to the end of the last."""
    if len(times) < warmup + window + 1:
        raise ValueError(f"{len(times)} steps timed, need {warmup + window + 1}")
    elapsed = times[warmup + window] - times[warmup]
    return sum(tokens[warmup + 1: warmup + window + 1]) / elapsed


def clock() -> tuple[float, float]:
    """Wall time and this process's CPU time (all threads), in seconds."""
    return time.perf_counter(), time.process_time()


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fit/raw pairs, alternating order")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--window", type=int, default=40, help="steps timed")
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
    last = args.warmup + args.window

    rates: dict[str, dict[str, list[float]]] = {kind: {"wall": [], "cpu": []} for kind in ("fit", "raw")}
    loss_at_window_end: dict[str, float] = {}
    initial_state = None
    order = []
    for r in range(args.repeats):
        order += ["fit", "raw"] if r % 2 == 0 else ["raw", "fit"]
    for kind in order:
        load = load_average()
        if kind == "fit":
            clock_callback = run_fit(total, extra).clock
            if initial_state is None:
                initial_state = clock_callback.initial_state
            times, tokens, losses = clock_callback.times, clock_callback.tokens, clock_callback.losses
        else:
            times, tokens, losses = run_raw(total, initial_state, extra)
        wall = tokens_per_second([t[0] for t in times], tokens, args.warmup, args.window)
        cpu = tokens_per_second([t[1] for t in times], tokens, args.warmup, args.window)
        rates[kind]["wall"].append(wall)
        rates[kind]["cpu"].append(cpu)
        loss_at_window_end.setdefault(kind, float(losses[last]))
        print(f"{kind}: {wall:8.0f} tokens/s wall, {cpu:8.0f} tokens per CPU-second, steps {args.warmup + 1}-{last}"
              f"  (load {load:.2f})", flush=True)

    median = {kind: {m: statistics.median(v) for m, v in by.items()} for kind, by in rates.items()}
    ratio = {m: median["fit"][m] / median["raw"][m] for m in ("wall", "cpu")}
    print(f"\nmedian tokens/s: fit {median['fit']['wall']:.0f}, raw {median['raw']['wall']:.0f}; "
          f"fit/raw = {ratio['wall']:.3f} (per CPU-second: {ratio['cpu']:.3f})")
    print(f"loss at step {last}: fit {loss_at_window_end['fit']:.6f}, raw {loss_at_window_end['raw']:.6f}")
    print(json.dumps({
        "ratio_fit_over_raw": round(ratio["wall"], 4),
        "ratio_fit_over_raw_cpu": round(ratio["cpu"], 4),
        "fit_tokens_per_s": round(median["fit"]["wall"]),
        "raw_tokens_per_s": round(median["raw"]["wall"]),
        "fit_runs": [round(x) for x in rates["fit"]["wall"]],
        "raw_runs": [round(x) for x in rates["raw"]["wall"]],
        "fit_runs_cpu": [round(x) for x in rates["fit"]["cpu"]],
        "raw_runs_cpu": [round(x) for x in rates["raw"]["cpu"]],
        "warmup_steps": args.warmup,
        "window_steps": args.window,
        "fit_loss_at_window_end": round(loss_at_window_end["fit"], 6),
        "raw_loss_at_window_end": round(loss_at_window_end["raw"], 6),
        "load_average_end": round(load_average(), 2),
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
