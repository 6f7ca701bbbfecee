"""Runs studies: each pending run handed to an executor (worker processes here or on Ray), records appended as runs
end, resumable."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from peftlab.io.atomic import remove_temporaries
from peftlab.io.folder_lock import folder_lock
from peftlab.study import events
from peftlab.study.analysis import delta_vs_full
from peftlab.study.executors import Executor, Job, LocalExecutor
from peftlab.study.plan import StudyConfig
from peftlab.study.preflight import check_study
from peftlab.study.progress import Progress, TqdmProgress
from peftlab.study.results import RESULTS_FILE, STUDY_FILE, append_record, load_records, repair_results, save_study
from peftlab.study.worker import RESULT_FILE, SPEC_FILE, base_record

LOG_FILE = "log.txt"
SRC_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the peftlab package


class Plan(Protocol):
    """What the runner needs of a study: its runs, in order (a compare study or a continual-learning study)."""

    def runs(self) -> list[Any]: ...


def pending_runs(study: Plan, records: list[dict[str, Any]], retry_failed: bool) -> list[Any]:
    """Runs without a record (or with a failed one, when `retry_failed`)."""
    done = {r["run_id"]: r["status"] for r in records}
    return [spec for spec in study.runs()
            if spec.run_id not in done or (retry_failed and done[spec.run_id] != "ok")]


def run_study(study: StudyConfig, out: Path, *, progress: Progress | None = None, retry_failed: bool = False,
              run_timeout: float | None = None, executor: Executor | None = None) -> list[dict[str, Any]]:
    """Run every pending run of `study` in `out` and return all records of the study's runs.

    Finished runs (ok or failed) are skipped, so re-running the same command resumes an interrupted study. What
    would fail every run alike (task, model, device, settings) raises StudyError before any run starts. The folder
    is locked while the study runs: another study on it raises FolderInUseError at once; a lock left by a killed
    process is taken over. A results line cut off by a crash is removed (its run runs again).
    """
    return run_studies([(study, out)], progress=progress, retry_failed=retry_failed,
                       executor=executor or LocalExecutor(run_timeout=run_timeout))[0]


def run_studies(studies: Sequence[tuple[Plan, Path]], *, progress: Progress | None = None,
                retry_failed: bool = False, executor: Executor | None = None) -> list[list[dict[str, Any]]]:
    """Run the pending runs of several studies (each with its own output folder) through one executor, so that
    runs of different studies can go at once; return each study's records.

    Every study is checked before any run starts; each finished run's record is appended to its own study's
    results file, and its delta to full fine-tuning computed from the records there. Every study folder is locked
    for the duration (run_study).
    """
    show = progress or TqdmProgress()
    with contextlib.ExitStack() as locks:
        for _, out in studies:
            locks.enter_context(_locked_folder(out, show))
        return _run_locked(studies, show, retry_failed, executor)


@contextlib.contextmanager
def _locked_folder(out: Path, show: Progress) -> Iterator[None]:
    """`out` created if missing and locked; a lock left by a killed process taken over; a folder this study created
    is removed again when the study stops before writing anything."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(out, f"a study ({_command_line()})") as lock:
            if lock.taken_over is not None:
                show.note(f"{out}: taking over the lock left by {lock.taken_over.describe()}, which no longer runs")
            remove_temporaries(out, (STUDY_FILE, RESULTS_FILE))  # of writes a killed study had begun
            removed = repair_results(out)
            if removed:
                show.note(f"{out / RESULTS_FILE}: removed {removed} incomplete line(s) left by an interrupted write; "
                          "their runs run again")
            yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _command_line() -> str:
    """How this process was started, e.g. "peftlab compare --out runs/a", for the lock holder's description."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv and sys.argv[0] else "python"


def _run_locked(studies: Sequence[tuple[Plan, Path]], show: Progress, retry_failed: bool,
                executor: Executor | None) -> list[list[dict[str, Any]]]:
    for study, _ in studies:
        check_study(study)
    jobs: list[Job] = []
    total = skipped = skipped_failed = 0
    for study, out in studies:
        save_study(out, study)
        records = load_records(out)
        todo = pending_runs(study, records, retry_failed)
        ids = {spec.run_id for spec in study.runs()}
        done_ids = ids - {spec.run_id for spec in todo}
        total += len(ids)
        skipped += len(done_ids)
        skipped_failed += sum(r["status"] != "ok" for r in records if r["run_id"] in done_ids)
        jobs += [Job(spec, out) for spec in todo]
    show.start(total=total, skipped=skipped, skipped_failed=skipped_failed)
    try:
        (executor or LocalExecutor()).run(jobs, _Recorder(show))
    finally:
        show.close()
    results = []
    for study, out in studies:
        ids = {spec.run_id for spec in study.runs()}
        results.append([r for r in load_records(out) if r["run_id"] in ids])
    return results


class _Recorder:
    """Appends each finished run's record to its study's results file and tells the progress display; executors
    may call from several threads, so each call holds a lock."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.lock = threading.Lock()

    def started(self, job: Job) -> None:
        with self.lock:
            self.progress.run_started(job.spec)

    def event(self, job: Job, event: dict[str, Any]) -> None:
        with self.lock:
            self.progress.run_event({**event, "run_id": job.spec.run_id})

    def finished(self, job: Job, record: dict[str, Any]) -> None:
        with self.lock:
            record["delta_vs_full"] = delta_vs_full(record, load_records(job.study_dir))
            append_record(job.study_dir, record)
            self.progress.run_finished(record)


def run_isolated(spec: Any, run_dir: Path, on_event: Callable[[dict[str, Any]], None],
                 timeout: float | None = None, extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Execute one run in a fresh `python -m peftlab.study.worker` process and return its record.

    A worker that dies without writing its result (killed, out of memory, timeout) yields a failed record with the
    exit status and the end of its log.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_FILE).unlink(missing_ok=True)
    (run_dir / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=1), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC_ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", **(extra_env or {}))
    command = [sys.executable, "-m", "peftlab.study.worker", str(run_dir)]
    timed_out = threading.Event()
    with open(run_dir / LOG_FILE, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, bufsize=1)
        timer = _kill_after(process, timeout, timed_out)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                event = events.parse(line)
                if event is None:
                    log.write(line)
                else:
                    on_event(event)
            process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
    result = run_dir / RESULT_FILE
    if result.exists():
        return json.loads(result.read_text(encoding="utf-8"))
    return _died(spec, run_dir, process.returncode, timeout if timed_out.is_set() else None)


def _kill_after(process: subprocess.Popen, timeout: float | None, flag: threading.Event) -> threading.Timer | None:
    if timeout is None:
        return None

    def kill() -> None:
        flag.set()
        process.kill()

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    return timer


def failed_record(spec: Any, reason: str) -> dict[str, Any]:
    """The record of a run that ended without a result of its own (its process died, or its Ray task was lost)."""
    record = base_record(spec)
    record.update(status="failed", error=reason, failed_phase="process",
                  finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    return record


def _died(spec: Any, run_dir: Path, code: int | None, timeout: float | None) -> dict[str, Any]:
    if timeout is not None:
        reason = f"run exceeded --run-timeout {timeout:g}s and was stopped"
    elif code is not None and code < 0:
        reason = f"worker process killed by signal {-code}" + (" (likely out of memory)" if code == -9 else "")
    else:
        reason = f"worker process exited with status {code} without a result"
    tail = (run_dir / LOG_FILE).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
    return failed_record(spec, reason + (f"; log: {' | '.join(tail)}" if tail else ""))
