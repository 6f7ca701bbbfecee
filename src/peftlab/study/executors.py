"""Where a study's runs execute. A run is a spec in, a record and a folder out: an executor takes jobs (a spec and
the folder its files belong in) and reports each job's start, progress events and final record. Records, resuming
and reports never know which executor produced them.

`LocalExecutor` runs worker subprocesses on this machine, `parallel` at once; `RayExecutor` (study.ray_executor)
fans them out over a Ray cluster.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

from peftlab.study.errors import StudyError

RUNS_DIR = "runs"
EXECUTORS = ("local", "ray")


class RunSpecLike(Protocol):
    """What an executor needs of a run's spec (a compare run or a continual-learning run)."""

    @property
    def run_id(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Job:
    """One run to execute: its spec and the study folder its record and files belong to."""

    spec: Any  # RunSpecLike
    study_dir: Path

    @property
    def run_dir(self) -> Path:
        return self.study_dir / RUNS_DIR / self.spec.run_id


class JobEvents(Protocol):
    """What an executor reports. Calls may come from several threads; the runner serialises them."""

    def started(self, job: Job) -> None: ...
    def event(self, job: Job, event: dict[str, Any]) -> None: ...
    def finished(self, job: Job, record: dict[str, Any]) -> None: ...


class Executor(Protocol):
    """Runs jobs and reports every one of them (a failed run is a record too) before returning."""

    def run(self, jobs: Sequence[Job], events: JobEvents) -> None: ...


@dataclasses.dataclass(frozen=True)
class LocalExecutor:
    """Each run in a fresh `python -m peftlab.study.worker` process on this machine, `parallel` at once.

    With several runs at once and no --threads, each worker gets cores // parallel torch threads (at least one),
    so that the runs do not fight over the same cores.
    """

    parallel: int = 1
    run_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise StudyError(f"--parallel must be >= 1, got {self.parallel}")

    def run(self, jobs: Sequence[Job], events: JobEvents) -> None:
        from peftlab.study.runner import run_isolated

        env = {} if self.parallel == 1 else {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // self.parallel))}

        def one(job: Job) -> None:
            events.started(job)
            record = run_isolated(job.spec, job.run_dir, lambda e: events.event(job, e), self.run_timeout,
                                  extra_env=env)
            events.finished(job, record)

        if self.parallel == 1:
            for job in jobs:
                one(job)
            return
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="peftlab-run") as pool:
            pending: set[Future] = set()
            queue = list(jobs)
            try:
                while queue or pending:
                    while queue and len(pending) < self.parallel and not stop.is_set():
                        pending.add(pool.submit(one, queue.pop(0)))
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # an error of the runner itself (not of a run) stops the study
            except BaseException:
                stop.set()
                for future in pending:
                    future.cancel()
                raise


def make_executor(name: str, *, parallel: int = 1, run_timeout: float | None = None, ray_address: str | None = None,
                  cpus_per_run: float | None = None, gpus_per_run: float | None = None) -> Executor:
    """The executor named on the command line (options of the other executor are rejected, not ignored)."""
    if name == "local":
        ray_only = {"--ray-address": ray_address, "--cpus-per-run": cpus_per_run, "--gpus-per-run": gpus_per_run}
        given = [option for option, value in ray_only.items() if value is not None]
        if given:
            raise StudyError(f"{', '.join(given)} need --executor ray (the local executor runs --parallel N at once)")
        return LocalExecutor(parallel=parallel, run_timeout=run_timeout)
    if name == "ray":
        if parallel != 1:
            raise StudyError("--parallel is for --executor local; with Ray, --cpus-per-run / --gpus-per-run and the "
                             "cluster's size decide how many runs go at once")
        from peftlab.study.ray_executor import RayExecutor

        return RayExecutor(address=ray_address, cpus_per_run=1.0 if cpus_per_run is None else cpus_per_run,
                           gpus_per_run=0.0 if gpus_per_run is None else gpus_per_run, run_timeout=run_timeout)
    raise StudyError(f"unknown --executor {name!r}; choose one of {', '.join(EXECUTORS)}")
