"""The built-in suites by name, and how ``--tasks`` names resolve: built-in, JSONL file, or harness task."""

from collections.abc import Callable
from pathlib import Path

from constellation_kit.eval.caption_suite import CaptionChoiceSuite
from constellation_kit.eval.copying_suite import CopyingSuite
from constellation_kit.eval.jsonl_task import JSONLTask
from constellation_kit.eval.reasoning_suites import ArithmeticSuite, VariableTrackingSuite
from constellation_kit.eval.retrieval_suites import MQARSuite, PasskeySuite
from constellation_kit.eval.task import EvalSuite

BUILTIN_SUITES: dict[str, Callable[[], EvalSuite]] = {
    "mqar": MQARSuite,
    "passkey_128": lambda: PasskeySuite(length=128),
    "passkey_512": lambda: PasskeySuite(length=512),
    "passkey_2048": lambda: PasskeySuite(length=2048),
    "variable_tracking": VariableTrackingSuite,
    "arithmetic": ArithmeticSuite,
    "copying": CopyingSuite,
    "image_caption": lambda: CaptionChoiceSuite("image"),
    "audio_caption": lambda: CaptionChoiceSuite("audio"),
}
"""Every built-in suite at its default size, by the name it logs under. The passkey lengths are filler words."""

TEXT_SUITES = ("mqar", "passkey_128", "passkey_512", "variable_tracking", "arithmetic", "copying")
"""What ``--tasks builtin`` expands to with a text-only run; a multimodal run adds the caption suites."""


def resolve_suite(name: str, include_path: str | None = None) -> EvalSuite | None:
    """The suite ``name`` means: a built-in, a ``.jsonl`` path, or ``<include_path>/<name>.jsonl``; else ``None``
    (the caller then asks the lm-evaluation-harness)."""
    if name in BUILTIN_SUITES:
        return BUILTIN_SUITES[name]()
    if name.endswith(".jsonl"):
        return JSONLTask(name)
    if include_path is not None:
        for directory in include_path.split(":"):
            candidate = Path(directory) / f"{name}.jsonl"
            if candidate.is_file():
                return JSONLTask(str(candidate))
    return None
