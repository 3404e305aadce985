"""Evaluation: reasoning suites in the validation loop, `constellation-kit eval`, generation, and the harness adapter.

- task formats (:mod:`~constellation_kit.eval.task`) and hand-written JSONL tasks (:mod:`~constellation_kit.eval.jsonl_task`);
- built-in, generated suites: :class:`MQARSuite`, :class:`PasskeySuite`, :class:`VariableTrackingSuite`,
  :class:`ArithmeticSuite`, :class:`CopyingSuite`, :class:`CaptionChoiceSuite`;
- scoring with the harness's semantics (:mod:`~constellation_kit.eval.scoring`);
- :mod:`~constellation_kit.eval.generation`: ``generate_text`` and ``generate`` with a KV cache;
- :class:`ValidationSuites`, the callback a recipe names to log ``val/<task>/acc`` during ``fit``;
- :mod:`constellation_kit.eval.harness`, the lm-evaluation-harness model (imported on its own: lm_eval is optional).
"""

from constellation_kit.eval.caption_suite import CaptionChoiceSuite
from constellation_kit.eval.copying_suite import CopyingSuite
from constellation_kit.eval.evaluate import TaskResult, evaluate_task
from constellation_kit.eval.jsonl_task import JSONLTask, read_jsonl_task
from constellation_kit.eval.reasoning_suites import ArithmeticSuite, VariableTrackingSuite
from constellation_kit.eval.retrieval_suites import MQARSuite, PasskeySuite
from constellation_kit.eval.scoring import Request, Scorer, encode_pair
from constellation_kit.eval.suites import BUILTIN_SUITES
from constellation_kit.eval.task import EvalSuite, GenerationItem, MediaRef, MultipleChoiceItem, Task
from constellation_kit.eval.validation_suites import ValidationSuites

__all__ = [
    "BUILTIN_SUITES",
    "ArithmeticSuite",
    "CaptionChoiceSuite",
    "CopyingSuite",
    "EvalSuite",
    "GenerationItem",
    "JSONLTask",
    "MQARSuite",
    "MediaRef",
    "MultipleChoiceItem",
    "PasskeySuite",
    "Request",
    "Scorer",
    "Task",
    "TaskResult",
    "ValidationSuites",
    "VariableTrackingSuite",
    "encode_pair",
    "evaluate_task",
    "read_jsonl_task",
]
