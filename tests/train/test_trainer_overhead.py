"""benchmarks/trainer_overhead.py compares like with like, and the fit path's logging stays cheap.

One short ``fit`` through the real CLI (the benchmark's recipe at test sizes) is shared by the tests:

- the benchmark's raw PyTorch loop, run a step after each of fit's from fit's initial weights on the
  same batches, gives fit's loss at every step (so its docstring's list of what fit computes is
  complete: balance terms, clipping, weight-decay groups, schedule), and both arms are timed;
- the MoE load telemetry is computed only on the steps the logger writes, and is in MLflow at each, while
  every step's balance values reach callbacks in the step's outputs;
- metrics go to MLflow asynchronously (params do not), and all are in the store when fit returns.
"""

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import torch

from conftest import REPO, enter_run_directory, tracking_client
from constellation_kit.train import LanguageModel, moe_terms

STEPS = 12
LOG_EVERY = 2
CLIP = 0.05
TEST_SIZES = [
    "--data.init_args.source.init_args.max_documents=40",
    "--data.init_args.tokenizer.init_args.vocab_size=512",
    "--data.init_args.seq_len=32",
    "--data.init_args.global_batch_size=4",
    "--data.init_args.val_fraction=0.2",
    "--trainer.limit_val_batches=0",       # no validation: this is about training steps
    f"--trainer.log_every_n_steps={LOG_EVERY}",
    "--trainer.logger.init_args.system_metrics_interval=null",
    f"--trainer.gradient_clip_val={CLIP}",  # small enough that every step clips
]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("trainer_overhead", REPO / "benchmarks" / "trainer_overhead.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    """The benchmark's fit for ``STEPS`` steps with its raw loop beside it, counting telemetry calls, the names
    the module hands ``self.log`` and MLflow batch writes."""
    benchmark = load_benchmark()
    telemetry_calls: list[int] = []
    logged_names: list[str] = []
    writes: list[dict] = []
    telemetry, log_batch, log = moe_terms.telemetry, mlflow.MlflowClient.log_batch, LanguageModel.log

    def recording_log(self, name, *args, **kwargs):
        logged_names.append(name)
        return log(self, name, *args, **kwargs)

    def counting_telemetry(layers):
        telemetry_calls.append(1)
        return telemetry(layers)

    def recording_log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        writes.append({"metrics": bool(metrics), "params": bool(params), "synchronous": synchronous,
                       "steps": sorted({m.step for m in metrics})})
        return log_batch(self, run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)

    with pytest.MonkeyPatch.context() as patch:
        enter_run_directory(patch, tmp_path_factory.mktemp("trainer-overhead"))
        patch.setattr(moe_terms, "telemetry", counting_telemetry)
        patch.setattr(mlflow.MlflowClient, "log_batch", recording_log_batch)
        patch.setattr(LanguageModel, "log", recording_log)
        cli = benchmark.run_side_by_side(STEPS, TEST_SIZES)
        run_id = cli.trainer.logger.run_id
        history = {key: [m.step for m in tracking_client().get_metric_history(run_id, key)]
                   for key in ("train/loss", "train/lr", "moe/maxvio", "moe/layer0/cv", "moe/router_z_loss")}
        yield cli.side_by_side, (telemetry_calls, logged_names), writes, history


@pytest.mark.slow
def test_the_raw_loop_computes_fits_loss_at_every_step_and_both_are_timed(fitted) -> None:
    side_by_side, *_ = fitted
    fit_losses = torch.stack(side_by_side.fit_losses)
    assert len(side_by_side.raw_losses) == len(fit_losses) == STEPS and side_by_side.tokens == [4 * 32] * STEPS
    # The same float32 ops in the same order, down to the clipping norm's summation order: bit for bit.
    # A missing balance term (router L2 x 1e-3 alone is ~1e-4 of the loss), clipping or schedule step
    # moves a loss by far more; clipping in another parameter order, by a rounding error.
    torch.testing.assert_close(torch.stack(side_by_side.raw_losses), fit_losses, rtol=0.0, atol=0.0)
    assert len({round(float(x), 4) for x in fit_losses}) == STEPS  # it trained: a different loss at every step
    # Every raw step is timed, and every fit step after the first (whose start is Lightning's).
    assert len(side_by_side.raw_seconds) == STEPS and len(side_by_side.fit_seconds) == STEPS - 1
    assert all(wall > 0 for wall, _ in side_by_side.raw_seconds + side_by_side.fit_seconds)


@pytest.mark.slow
def test_the_loss_and_moe_telemetry_are_logged_only_on_the_written_steps_and_written_at_each(fitted) -> None:
    *_, (telemetry_calls, logged_names), _, history = fitted
    written = list(range(LOG_EVERY - 1, STEPS, LOG_EVERY))  # Lightning writes after steps 2, 4: logged as 1, 3
    assert history["train/loss"] == written
    assert history["moe/maxvio"] == history["moe/layer0/cv"] == history["moe/router_z_loss"] == written
    assert history["train/lr"] == written
    # Computed and handed to Lightning (~0.5 ms a self.log) on those steps alone, not on every step.
    assert len(telemetry_calls) == len(written)
    assert logged_names.count("train/loss") == logged_names.count("train/lr") == len(written)
    # The 6 x (layers + 1) load statistics skip self.log altogether (one logger call a written step);
    # the balance values, the loss's own terms, stay in Lightning's metrics.
    assert logged_names.count("moe/router_z_loss") == len(written)
    assert not any(name.endswith(("maxvio", "cv", "router_entropy")) for name in logged_names)


@pytest.mark.slow
def test_every_steps_balance_values_reach_callbacks_in_its_outputs(fitted) -> None:
    side_by_side, *_ = fitted
    assert len(side_by_side.balance) == STEPS
    for values in side_by_side.balance:  # the values of the step's own routing: the three pieces, all non-zero
        assert set(values) == {"moe/switch_balance", "moe/router_z_loss", "moe/router_l2"} and all(values.values())


@pytest.mark.slow
def test_metrics_are_written_asynchronously_and_gathered_by_step_and_params_are_not(fitted) -> None:
    *_, writes, history = fitted
    metric_writes = [w for w in writes if w["metrics"]]
    param_writes = [w for w in writes if w["params"]]
    assert metric_writes and param_writes
    assert all(w["synchronous"] is False for w in metric_writes)
    assert all(w["synchronous"] is not False for w in param_writes)
    # A written step's metrics come from four sources (Lightning, the MoE telemetry, the learning-rate and
    # throughput monitors) and reach the store in two writes: the logger gathers them until Lightning's
    # save(), which follows the throughput monitor's write (it goes through Lightning's connector) and
    # Lightning's own. The step-0 write is the data module's.
    writes_per_step = Counter(step for w in metric_writes for step in w["steps"])
    assert writes_per_step == {0: 1, **{step: 2 for step in range(LOG_EVERY - 1, STEPS, LOG_EVERY)}}, writes_per_step
    assert history["train/loss"]  # and yet in the store by the time fit returned
