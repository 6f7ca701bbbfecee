"""The same study through the local executor and a real local Ray cluster: the same run ids and records, and Ray
runs two workers at once (their processes' lifetimes overlap)."""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from peftlab.study.errors import StudyError
from tests.study.conftest import MINI, read_results, run_cli

ray = pytest.importorskip("ray")

# What legitimately differs between two executions of the same run: clocks, processes, memory and where files are.
VOLATILE = {"started_at", "finished_at", "host", "pid", "wall_seconds", "train_seconds", "median_step_seconds",
            "examples_per_second", "phase_seconds", "latency", "peak_memory_mb", "rss_after_load_mb",
            "process_peak_rss_mb", "process_cpu_seconds", "adapter_path",
            "delta_vs_full"}  # recomputed by the report: it depends on the order in which runs finished
STUDY = (*MINI, "--methods", "full,lora", "--threads", "1", "--no-report")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster (2 CPUs) for the module; the executor uses the running session."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _close(a: Any, b: Any, path: str = "") -> None:
    """Equal, except floats within floating-point noise."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b)), path
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _overlap(records: list[dict[str, Any]]) -> bool:
    """Whether two runs, in different processes, were alive at the same time."""
    spans = sorted((datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"]), r["pid"])
                   for r in records)
    return any(b[0] < a[1] and b[2] != a[2] for a, b in itertools.pairwise(spans))


def test_ray_and_local_executors_give_the_same_records_and_run_two_at_once(tmp_path: Path, cluster) -> None:
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert run_cli("compare", *STUDY, "--parallel", "2", "--out", str(local)) == 0
    assert run_cli("compare", *STUDY, "--executor", "ray", "--cpus-per-run", "1", "--out", str(remote)) == 0

    by_id = {r["run_id"]: r for r in read_results(local)}
    on_ray = {r["run_id"]: r for r in read_results(remote)}
    assert len(by_id) == 2 and by_id.keys() == on_ray.keys()
    for run_id, record in by_id.items():
        other = on_ray[run_id]
        assert record["status"] == other["status"] == "ok", other["error"]
        _close({k: v for k, v in record.items() if k not in VOLATILE},
               {k: v for k, v in other.items() if k not in VOLATILE}, run_id)
        # the run's folder came back from the Ray worker: spec, log, result and the adapter
        folder = remote / "runs" / run_id
        assert other["adapter_path"] == str(folder / "adapter")
        assert (folder / "adapter" / "adapter_config.json").exists() and (folder / "log.txt").exists()
        assert (folder / "result.json").exists() and (folder / "spec.json").exists()
    assert _overlap(list(on_ray.values())), "the two Ray runs did not overlap in time"
    assert _overlap(list(by_id.values())), "--parallel 2 did not run two workers at once"

    # resuming a Ray study runs nothing; the report reads the records like any others
    assert run_cli("compare", *STUDY, "--executor", "ray", "--out", str(remote)) == 0
    assert len(read_results(remote)) == 2
    assert run_cli("report", str(remote)) == 0 and "| lora |" in (remote / "report.md").read_text()


@pytest.mark.parametrize(("options", "message"), [
    (("--ray-address", "auto"), "--ray-address need --executor ray"),
    (("--executor", "ray", "--parallel", "2"), "--parallel is for --executor local"),
    (("--executor", "ray", "--cpus-per-run", "0"), "--cpus-per-run must be > 0"),
    (("--parallel", "0"), "--parallel must be >= 1"),
])
def test_executor_options_are_checked_before_anything_runs(tmp_path: Path, options: tuple[str, ...],
                                                           message: str) -> None:
    with pytest.raises(StudyError, match=message):
        run_cli("compare", *MINI, "--methods", "lora", *options, "--out", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
