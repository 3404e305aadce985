"""The cluster executors get what they need: picklable stages, chained by `depends`, with their options."""

from pathlib import Path

import dill
import pytest

from constellation_kit.data.curation import Curation
from constellation_kit.data.curation.executors import make_executor
from constellation_kit.errors import ConfigError


def test_every_stage_pickles_as_slurm_and_ray_ship_them(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("the text")
    stages = Curation(tasks=3).stages([str(tmp_path / "a.txt")], tmp_path / "out", tmp_path / "out" / "tokenizer.json",
                                      train_tokenizer=True, tracking_uri=None)
    assert [s.name for s in stages] == ["read", "exact_find", "exact_filter", "near_buckets", "near_cluster",
                                        "near_filter", "tokenizer", "shards", "report"]
    assert [s.tasks for s in stages] == [3, 1, 3, 17, 1, 3, 1, 3, 1]
    for stage in stages:
        steps = dill.loads(dill.dumps(stage.steps))
        assert [type(s) for s in steps] == [type(s) for s in stage.steps]


def test_slurm_executor_chains_stages_and_needs_partition_and_time(tmp_path: Path) -> None:
    first = make_executor("slurm", [], 4, -1, tmp_path / "a", None, {"partition": "cpu", "time": "1:00:00"}, "read")
    second = make_executor("slurm", [], 1, -1, tmp_path / "b", first, {"partition": "cpu", "time": "1:00:00"}, "find")
    assert (second.depends, second.tasks, first.partition, first.job_name) == (first, 1, "cpu", "curate-read")
    with pytest.raises(ConfigError, match="partition"):
        make_executor("slurm", [], 4, -1, tmp_path / "c", None, {}, "read")


def test_disabled_dedup_drops_its_stages(tmp_path: Path) -> None:
    from constellation_kit.data.curation import ExactDedup, NearDedup

    (tmp_path / "a.txt").write_text("the text")
    stages = Curation(tasks=2, exact_dedup=ExactDedup(enabled=False), near_dedup=NearDedup(enabled=False)).stages(
        [str(tmp_path / "a.txt")], tmp_path / "out", tmp_path / "t.json", train_tokenizer=False)
    assert [s.name for s in stages] == ["read", "shards", "report"]
