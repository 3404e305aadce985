"""The console script, driven in-process exactly as a user types it."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Callback, Trainer

from constellation_kit.cli import COMMANDS, Command, ConstellationCLI, main
from constellation_kit.model.attention_backends import _log_choice
from constellation_kit.train.moe_terms import BALANCE_KEY
from conftest import REPO, SMALL_DATA, TINY, tracking_client


def print_config(capsys: pytest.CaptureFixture, *configs: str | Path, extra: list[str] = ()) -> dict:
    args = ["fit"] + [f"--config={c}" for c in configs] + list(extra) + ["--print_config"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_later_configs_and_dotted_overrides_win(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    override = tmp_path / "wider.yaml"
    override.write_text("model:\n  init_args:\n    network:\n      init_args:\n        d_model: 256\n")
    config = print_config(capsys, TINY, override, extra=["--model.init_args.network.init_args.n_layers=5"])
    network = config["model"]["init_args"]["network"]["init_args"]
    assert (network["d_model"], network["n_layers"]) == (256, 5)


def test_an_integer_batch_limit_counts_batches_and_a_float_is_a_fraction(capsys: pytest.CaptureFixture) -> None:
    # Lightning reads limit_val_batches=1 as one batch and 1.0 as all of them; the parser must keep them apart.
    trainer = print_config(capsys, TINY, extra=["--trainer.limit_val_batches=1", "--trainer.limit_train_batches=1.0",
                                                "--trainer.limit_test_batches=0.25", "--trainer.overfit_batches=3"])["trainer"]
    limits = {key: trainer[key] for key in ("limit_val_batches", "limit_train_batches", "limit_test_batches",
                                             "overfit_batches")}
    assert limits == {"limit_val_batches": 1, "limit_train_batches": 1.0, "limit_test_batches": 0.25, "overfit_batches": 3}
    assert [type(v) for v in limits.values()] == [int, float, float, int]


def fit(*args: str) -> ConstellationCLI:
    return ConstellationCLI(args=["fit", f"--config={TINY}", *SMALL_DATA, *args])


def test_print_config_output_runs_as_printed(capsys: pytest.CaptureFixture, in_tmp_dir: Path) -> None:
    printed = in_tmp_dir / "printed.yaml"
    config = print_config(capsys, TINY, extra=SMALL_DATA + ["--trainer.max_steps=1", "--trainer.limit_val_batches=1"])
    printed.write_text(yaml.safe_dump(config))
    cli = ConstellationCLI(args=["fit", f"--config={printed}"])
    assert cli.trainer.global_step == 1


def run_history(run_id: str, key: str) -> dict[int, float]:
    client = tracking_client()
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


class StopAtStep(Callback):
    """Ends fit after ``step`` optimizer steps, as if the run had been interrupted there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class RecordMediaCounts(Callback):
    """Appends ``{"rank", "step", "image", "audio"}`` (items in each training micro-batch) to ``media_counts.jsonl``."""

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch: dict, batch_idx: int) -> None:
        row = {"rank": trainer.global_rank, "step": trainer.global_step,
               **{m: int(batch[m].shape[0]) for m in ("image", "audio") if m in batch}}
        with open("media_counts.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


class RecordLossTerms(Callback):
    """Appends one record per training micro-batch to ``loss_terms.rank<r>.jsonl``: the loss the optimizer
    was handed and the parts it was made of, all from this rank (under FSDP2 ``train/loss`` is the mean
    over ranks, the ``moe/*`` values are this rank's own).

    ``optimised``: ``training_step``'s returned loss (Lightning hands callbacks that loss divided by
    ``accumulate_grad_batches``; multiplied back here). ``reported``: the loss ``_loss`` returned, which
    ``training_step`` logs as ``train/loss`` (the LM loss, plus ``alignment_weight x`` the alignment loss
    in a multimodal module that has one); ``logged_loss``: ``train/loss`` as last logged (the mean over
    ranks), which is this micro-batch's on the steps the logger writes.
    ``balance``: each balance piece's ``moe/<name>`` this micro-batch (from the step's outputs); ``coefficients``: the
    pieces' coefficients, read off the model.
    """

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        compute = pl_module._loss
        self.reported: float | None = None

        def recording_loss(batch: dict, logits_needed: bool = True):
            result = compute(batch, logits_needed)
            if pl_module.training:
                self.reported = float(result[0].detach())
            return result

        pl_module._loss = recording_loss

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch: dict, batch_idx: int) -> None:
        logged = trainer.callback_metrics
        balance = outputs.get(BALANCE_KEY, {}) if isinstance(outputs, dict) else {}
        row = {"step": trainer.global_step, "batch": batch_idx,
               "optimised": float(outputs["loss"]) * trainer.accumulate_grad_batches,
               # logged (so fresh) on the micro-batches the logger writes: an accumulation's last
               "reported": self.reported, "logged_loss": float(logged["train/loss"]) if "train/loss" in logged else None,
               # this micro-batch's own values: logged ones are refreshed only on the steps the logger writes
               "balance": {p.name: float(balance[f"moe/{p.name}"]) for p in pl_module.balance if f"moe/{p.name}" in balance},
               "coefficients": {p.name: p.coefficient for p in pl_module.balance}}
        self.reported = None
        with open(f"loss_terms.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def loss_terms(directory: Path, rank: int = 0) -> list[dict]:
    """``RecordLossTerms``' records of ``rank``, in training order."""
    return [json.loads(line) for line in (directory / f"loss_terms.rank{rank}.jsonl").read_text().splitlines()]


def assert_loss_is_reported_loss_plus_balance(records: list[dict], moe: bool) -> None:
    """``optimised - reported == Σ coefficient x moe/<name>`` in every record (a dense model: ``== 0``).

    ``reported`` is the loss logged as ``train/loss`` (see ``RecordLossTerms``), so the difference is
    exactly what the balance pieces add. Tolerance: the losses are float32 near ln(vocab) ≈ 6, whose
    spacing is 5e-7; a dropped coefficient or piece moves the difference by ≥ 1e-4 (router L2 x 0.001).
    """
    for record in records:
        difference = record["optimised"] - record["reported"]
        if not moe:
            assert record["balance"] == {} and difference == 0.0, record
            continue
        # Every piece logged its value, and the values are not all zero (or the identity proves nothing).
        assert record["balance"].keys() == record["coefficients"].keys() and any(record["balance"].values()), record
        expected = sum(c * record["balance"][name] for name, c in record["coefficients"].items())
        assert difference == pytest.approx(expected, rel=1e-4, abs=2e-6), record


def test_the_console_script_runs_exit_handlers_and_keeps_the_exit_code(tmp_path: Path) -> None:
    # console_main skips module teardown with os._exit: the atexit handlers (logging, MLflow) must still
    # run, and a command's exit status (2 for a config error, 0 for --help) must still reach the shell.
    marker = tmp_path / "handler_ran"
    script = f"""
import atexit
from pathlib import Path
import constellation_kit.cli as cli

def main():
    atexit.register(Path({str(marker)!r}).write_text, "yes")
    raise SystemExit(3)

cli.main = main
cli.console_main()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr[-2000:]
    assert marker.read_text() == "yes"


def test_bf16_mixed_clips_gradients_with_base_yamls_optimizer(in_tmp_dir: Path) -> None:
    # small.yaml and xl.yaml train in bf16-mixed with base.yaml's AdamW and gradient clipping: Lightning
    # refuses to clip for an optimizer that unscales gradients itself (fused=True), at the first step.
    # (tiny trains in fp32 with a fused AdamW; here it takes base.yaml's settings back.)
    base_optimizer = ["--model.init_args.optimizer.init_args.fused=false", "--model.init_args.optimizer.init_args.foreach=true"]
    cli = fit("--trainer.precision=bf16-mixed", "--trainer.max_steps=1", "--trainer.limit_val_batches=1", *base_optimizer)
    assert cli.trainer.global_step == 1
    assert cli.trainer.gradient_clip_val == 1.0


def test_fit_two_steps_then_resume_continues_exactly(in_tmp_dir: Path) -> None:
    common = ["--trainer.max_steps=4", "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=2",
              "--trainer.val_check_interval=2"]
    every_step = ["--trainer.callbacks.init_args.every_n_train_steps=1"]
    stop = '--trainer.callbacks+={"class_path": "test_cli.StopAtStep", "init_args": {"step": 2}}'
    first = fit(*common, *every_step, stop)
    assert first.trainer.global_step == 2
    run_dir = first.trainer.logger.run_dir
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step0000001.ckpt", "step0000002.ckpt"]  # no "step=step=" glitch

    resumed = fit("--ckpt_path=last", *common, *every_step)
    assert resumed.trainer.global_step == 4
    assert resumed.trainer.logger.run_id == first.trainer.logger.run_id  # the same MLflow run continues
    # The run keeps its original config; the resume's own sits beside it, on disk and in MLflow.
    assert (run_dir / "config.yaml").read_text() != (run_dir / "resume-1" / "config.yaml").read_text()
    artifacts = tracking_client().list_artifacts(first.trainer.logger.run_id, "resume-1")
    assert {a.path for a in artifacts} >= {"resume-1/config.yaml", "resume-1/environment.json"}
    resumed_losses = run_history(resumed.trainer.logger.run_id, "train/loss")

    straight = ConstellationCLI(
        args=["fit", f"--config={TINY}", *SMALL_DATA, *common, "--trainer.logger.init_args.run_name=straight"]
    )
    straight_losses = run_history(straight.trainer.logger.run_id, "train/loss")
    assert len(straight_losses) == 4 and resumed_losses.keys() == straight_losses.keys()
    # Same data position, optimizer and schedule state: the resumed steps reproduce the straight run.
    for step in straight_losses:
        assert resumed_losses[step] == pytest.approx(straight_losses[step], rel=1e-6, abs=1e-7)
    assert run_history(resumed.trainer.logger.run_id, "train/lr") == run_history(straight.trainer.logger.run_id, "train/lr")


def test_mlflow_run_holds_config_params_tags_and_curves(in_tmp_dir: Path) -> None:
    cli = fit("--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.limit_val_batches=2",
              "--trainer.log_every_n_steps=1", "--trainer.logger.init_args.system_metrics_interval=0.2")
    run_id = cli.trainer.logger.run_id
    client = tracking_client()  # MLflow's local default, in the working directory
    run = client.get_run(run_id)
    assert run.info.run_name == "tiny"
    assert run.data.tags["recipes"].endswith("recipes/tiny.yaml")
    assert run.data.params["model.init_args.network.init_args.d_model"] == "128"
    assert run.data.params["data.init_args.tokenizer.init_args.vocab_size"] == "512"
    assert "config.yaml" in [a.path for a in client.list_artifacts(run_id)]
    assert {"train/loss", "train/lr", "val/loss"} <= set(run.data.metrics)
    val = run_history(run_id, "val/loss")
    assert 0 in val  # the step-0 baseline from ValidateAtStart
    assert (cli.trainer.logger.run_dir / "config.yaml").is_file()
    # The run record: the code's commit, the packages, the machine, MLflow's system metrics.
    tags = run.data.tags
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert tags["git.commit"] == commit.strip() and tags["git.dirty"] in ("true", "false")
    assert tags["version.torch"] == metadata.version("torch") and tags["hardware.cpu_count"] == str(os.cpu_count())
    assert {"recipes/tiny.yaml", "environment.json"} <= {a.path for a in client.list_artifacts(run_id, "recipes")} | {
        a.path for a in client.list_artifacts(run_id)}
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)


def error_of(capsys: pytest.CaptureFixture, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_unknown_class_path_names_it(capsys: pytest.CaptureFixture) -> None:
    err = error_of(capsys, "fit", f"--config={TINY}",
                   "--model.init_args.network.init_args.attention.class_path=constellation_kit.model.NoSuchAttention")
    assert "NoSuchAttention" in err


def test_indivisible_d_model_is_one_clear_line(capsys: pytest.CaptureFixture, in_tmp_dir: Path) -> None:
    err = error_of(capsys, "fit", f"--config={TINY}", *SMALL_DATA, "--model.init_args.network.init_args.d_model=130")
    assert "d_model=130 is not divisible by n_heads=4" in err
    assert "Traceback" not in err


def test_indivisible_global_batch_names_the_three_numbers(capsys: pytest.CaptureFixture, in_tmp_dir: Path) -> None:
    err = error_of(capsys, "fit", f"--config={TINY}", *SMALL_DATA, "--data.init_args.global_batch_size=6",
                   "--trainer.accumulate_grad_batches=4")
    assert "global_batch_size=6" in err and "accumulate_grad_batches=4" in err and "world_size=1" in err


def test_resume_without_a_checkpoint_says_where_it_looked(capsys: pytest.CaptureFixture, in_tmp_dir: Path) -> None:
    err = error_of(capsys, "fit", f"--config={TINY}", *SMALL_DATA, "--ckpt_path=last")
    assert "runs/tiny/tiny/*/checkpoints/last.ckpt" in err


def test_missing_checkpoint_file(capsys: pytest.CaptureFixture, in_tmp_dir: Path) -> None:
    err = error_of(capsys, "validate", f"--config={TINY}", *SMALL_DATA, "--ckpt_path=nowhere.ckpt")
    assert "nowhere.ckpt: no such checkpoint file" in err


def test_a_registered_command_joins_the_same_help(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    command = Command(
        name="hello",
        help="Greet someone (a test command).",
        add_arguments=lambda parser: parser.add_argument("--name", type=str, default="world"),
        run=lambda config, cli: seen.update(name=config.name),
    )
    monkeypatch.setitem(COMMANDS, "hello", command)
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in ("fit", "validate", "test", "predict", "hello"))
    main(["hello", "--name=researcher"])
    assert seen == {"name": "researcher"}


def test_small_recipe_selects_auto_attention_and_runs_on_cpu_through_sdpa(in_tmp_dir: Path, caplog) -> None:
    small = REPO / "recipes" / "small.yaml"
    config = yaml.safe_load(small.read_text())
    assert config["model"]["init_args"]["network"]["init_args"]["attention"]["init_args"]["backend"] == "auto"
    _log_choice.cache_clear()  # the choice is logged once per process; earlier tests may have had it
    with caplog.at_level("INFO"):
        cli = ConstellationCLI(args=[
            "fit", f"--config={small}", "--data.init_args.source.init_args.max_documents=20",
            "--data.init_args.tokenizer.init_args.vocab_size=512", "--data.init_args.seq_len=64",
            "--data.init_args.global_batch_size=4", "--data.init_args.val_fraction=0.2", "--trainer.max_steps=1",
            "--trainer.limit_val_batches=1", "--trainer.precision=32-true", "--trainer.accelerator=cpu",
        ])
    assert cli.trainer.global_step == 1
    assert "attention backend auto -> sdpa on cpu" in caplog.text
