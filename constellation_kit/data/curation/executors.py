"""Which datatrove executor runs the curation stages: local processes, a SLURM cluster, or a Ray cluster."""

from pathlib import Path
from typing import Any, Literal

from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.base import PipelineStep

from constellation_kit.errors import ConfigError

ExecutorKind = Literal["local", "slurm", "ray"]


def make_executor(kind: ExecutorKind, steps: list[PipelineStep], tasks: int, workers: int, logging_dir: Path,
                  depends: PipelineExecutor | None, options: dict[str, Any], job_name: str) -> PipelineExecutor:
    """A datatrove executor for one stage, after ``depends``.

    ``local``: ``LocalPipelineExecutor``, ``workers`` tasks at a time in a process pool (one: in this
    process). ``slurm``: ``SlurmPipelineExecutor``, one array job per stage chained by SLURM
    dependencies; ``options`` are its arguments (``partition`` and ``time`` are required, e.g.
    ``sbatch_args``, ``venv_path``, ``cpus_per_task``). ``ray``: ``RayPipelineExecutor`` on the Ray
    cluster ``ray.init()`` finds; ``options`` are its arguments. Every executor skips the tasks its
    ``logging_dir/completions`` marks done, which is what makes a rerun resume.
    """
    common = dict(pipeline=steps, tasks=tasks, workers=workers, logging_dir=str(logging_dir), depends=depends)
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(**common, **options)
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        missing = [k for k in ("partition", "time") if k not in options]
        if missing:
            raise ConfigError(f"executor slurm needs executor_options {missing} (e.g. partition: cpu, time: '12:00:00')")
        return SlurmPipelineExecutor(**common, job_name=f"curate-{job_name}", **options)
    if kind == "ray":
        try:
            from datatrove.executor.ray import RayPipelineExecutor
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("executor ray needs Ray: pip install 'ray[default]'") from None
        return RayPipelineExecutor(**common, **options)
    raise ConfigError(f"executor {kind!r}: choose local, slurm or ray")
