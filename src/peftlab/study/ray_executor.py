"""`--executor ray`: a study's runs as Ray tasks, on an existing cluster (`--ray-address`) or on a local one started
for the study. Each task runs the same worker subprocess as the local executor, in a temporary folder on whichever
node Ray picked, and returns the run's record and folder (spec, log, result, adapter) as one archive, which is
unpacked into the study's output folder here. So records, resume and reports are the same as with local runs.

Every node needs peftlab and the task's assets installed (and a user's data file at the same path).
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftlab.study.errors import StudyError
from peftlab.study.executors import Job, JobEvents

ADAPTER_DIR = "adapter"


@dataclasses.dataclass(frozen=True)
class RayExecutor:
    """Runs jobs as Ray tasks with `cpus_per_run` CPUs and `gpus_per_run` GPUs each (Ray runs as many at once as the
    cluster's resources allow). Without an address and without a running Ray session, a local cluster with every
    core of this machine is started for the study and shut down after it; a session started by the caller
    (`ray.init(...)` before the study) is used as it is."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    run_timeout: float | None = None

    def __post_init__(self) -> None:
        if not self.cpus_per_run > 0:
            raise StudyError(f"--cpus-per-run must be > 0, got {self.cpus_per_run}")
        if self.gpus_per_run < 0:
            raise StudyError(f"--gpus-per-run must be >= 0, got {self.gpus_per_run}")

    def run(self, jobs: Sequence[Job], events: JobEvents) -> None:
        if not jobs:
            return
        ray = import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            connect(ray, self.address)
        try:
            task = ray.remote(execute_remote).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                                      max_retries=0)
            pending = {task.remote(job.spec.to_dict(), self.run_timeout): job for job in jobs}
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        job = pending.pop(ref)
                        events.finished(job, self._collect(ray, ref, job))
            except BaseException:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        finally:
            if started_here:
                ray.shutdown()

    @staticmethod
    def _collect(ray: Any, ref: Any, job: Job) -> dict[str, Any]:
        """The task's record with its folder unpacked into the job's run folder (a lost task: a failed record)."""
        from peftlab.study.runner import failed_record

        try:
            record, archive = ray.get(ref)
        except ray.exceptions.RayError as err:
            return failed_record(job.spec, f"the Ray task of this run failed: {type(err).__name__}: "
                                           f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}")
        unpack(archive, job.run_dir)
        if record.get("adapter_path"):
            record["adapter_path"] = str(job.run_dir / ADAPTER_DIR)
        return record


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise StudyError("--executor ray needs Ray: pip install 'peftlab[ray]'") from None
    return ray


def connect(ray: Any, address: str | None) -> None:
    """Join the cluster at `address`, or start a local one with every core of this machine."""
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                               "runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise StudyError(f"could not connect to {where}: {err}") from None


def execute_remote(spec_data: dict[str, Any], run_timeout: float | None) -> tuple[dict[str, Any], bytes]:
    """The Ray task: run the worker subprocess in a temporary folder; return its record and the folder's archive."""
    from peftlab.study.runner import run_isolated
    from peftlab.study.specs import load_spec

    spec = load_spec(spec_data)
    with tempfile.TemporaryDirectory(prefix="peftlab-run-") as tmp:
        run_dir = Path(tmp) / spec.run_id
        record = run_isolated(spec, run_dir, lambda event: None, run_timeout)
        return record, pack(run_dir)


def pack(folder: Path) -> bytes:
    """An uncompressed tar of the folder's contents (adapters are safetensors: they do not compress)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    """Replace `folder` with the archive's contents (tarfile's "data" filter: no links out, no special files)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        archive.extractall(folder, filter="data")
