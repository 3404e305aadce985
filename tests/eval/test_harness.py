"""The lm-evaluation-harness adapter: lm_eval's own simple_evaluate agrees with constellation-kit eval."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from constellation_kit.eval import CopyingSuite
from constellation_kit.trained_model import load_trained_model
from conftest import REPO, last_checkpoint

lm_eval = pytest.importorskip("lm_eval")
from constellation_kit.eval.harness import ConstellationLM  # noqa: E402  (needs lm_eval)

TASK_YAML = """\
task: local_copying
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def local_task(tmp_path_factory) -> Path:
    """The same 24 questions as a harness task (YAML + JSON data on disk) and as a constellation-kit JSONL task."""
    directory = tmp_path_factory.mktemp("tasks")
    items = CopyingSuite(length=8, num_items=24, seed=3).build().items
    lines = [json.dumps({"context": i.context, "choices": list(i.choices), "answer": i.answer}) for i in items]
    (directory / "local_copying.jsonl").write_text("\n".join(lines) + "\n")
    (directory / "data").mkdir()
    (directory / "data" / "questions.json").write_text("\n".join(lines) + "\n")
    (directory / "local_copying.yaml").write_text(TASK_YAML.format(data=directory / "data" / "questions.json"))
    return directory


@pytest.mark.slow
def test_simple_evaluate_with_the_adapter_matches_constellation_kit_eval(tiny_run, local_task: Path, tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    from constellation_kit.cli import main

    checkpoint = last_checkpoint(tiny_run[0])
    output = tmp_path / "scores.json"
    main(["eval", f"--ckpt_path={checkpoint}", f"--tasks={local_task / 'local_copying.jsonl'}", f"--output={output}",
          "--mlflow=none", "--batch_size=5"])
    ours = json.loads(output.read_text())["results"]["local_copying"]
    assert ours["num_items"] == 24 and ours["chance"] == pytest.approx(0.25)
    # The harness: its own YAML loader, prompts, request building, acc/acc_norm; the model looked up by name.
    harness = lm_eval.simple_evaluate(model="constellation-kit", model_args=f"ckpt_path={checkpoint}", tasks=["local_copying"],
                                      task_manager=TaskManager(include_path=str(local_task), include_defaults=False), batch_size=7,
                                      bootstrap_iters=0)["results"]["local_copying"]
    assert harness["acc,none"] == pytest.approx(ours["metrics"]["acc"])
    assert harness["acc_norm,none"] == pytest.approx(ours["metrics"]["acc_norm"])
    assert 0 < ours["metrics"]["acc"] < 1 or ours["metrics"]["acc_norm"] != ours["metrics"]["acc"]  # not a degenerate match


def test_rolling_loglikelihood_is_the_documents_sum_over_windows(tiny_run) -> None:
    from lm_eval.api.instance import Instance

    trained = load_trained_model(last_checkpoint(tiny_run[0]))
    text = "import os\nimport sys\n\ndef main():\n    print(os.getcwd(), sys.argv)\n"
    ids = trained.tokenizer.encode(text).ids
    request = Instance("loglikelihood_rolling", {}, (text,), 0)
    whole = ConstellationLM(trained=trained, max_length=len(ids) + 1).loglikelihood_rolling([request], disable_tqdm=True)[0]
    windowed = ConstellationLM(trained=trained, max_length=8).loglikelihood_rolling([request], disable_tqdm=True)[0]
    scorer = ConstellationLM(trained=trained).scorer
    from constellation_kit.eval.scoring import Request

    assert whole == pytest.approx(scorer.loglikelihoods([Request([scorer.eos_id], ids)])[0][0], abs=1e-3)
    assert windowed != pytest.approx(whole, abs=1e-3)  # 8-token windows see less context: a different number


def test_generate_until_stops_at_its_until_strings(tiny_run) -> None:
    from lm_eval.api.instance import Instance

    lm = ConstellationLM(trained=load_trained_model(last_checkpoint(tiny_run[0])))
    free, = lm.generate_until([Instance("generate_until", {}, ("def", {"until": ["@@@"], "max_gen_toks": 6}), 0)],
                              disable_tqdm=True)
    cut, = lm.generate_until([Instance("generate_until", {}, ("def", {"until": [free[2:4]], "max_gen_toks": 6}), 0)],
                             disable_tqdm=True)
    assert free and cut == free[: free.index(free[2:4])]


@pytest.mark.slow
def test_the_lm_eval_command_line_knows_the_model(tiny_run, local_task: Path) -> None:
    """lm_eval 0.4.13 loads no plugins: ``python -m constellation_kit.eval.harness`` is its CLI with the model registered."""
    result = subprocess.run(
        [sys.executable, "-m", "constellation_kit.eval.harness", "run", "--model", "constellation-kit", "--model_args",
         f"ckpt_path={last_checkpoint(tiny_run[0])}", "--tasks", "local_copying", "--include_path", str(local_task),
         "--limit", "4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "local_copying" in result.stdout and "acc_norm" in result.stdout
