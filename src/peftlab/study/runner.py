"""Runs a study: each pending run in its own worker process, records appended as runs end, resumable."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftlab.io.atomic import remove_temporaries
from peftlab.io.folder_lock import folder_lock
from peftlab.study import events
from peftlab.study.analysis import delta_vs_full
from peftlab.study.plan import RunSpec, StudyConfig
from peftlab.study.preflight import check_study
from peftlab.study.progress import Progress, TqdmProgress
from peftlab.study.results import RESULTS_FILE, STUDY_FILE, append_record, load_records, repair_results, save_study
from peftlab.study.worker import RESULT_FILE, SPEC_FILE, base_record

RUNS_DIR = "runs"
LOG_FILE = "log.txt"
SRC_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the peftlab package


def pending_runs(study: StudyConfig, records: list[dict[str, Any]], retry_failed: bool) -> list[RunSpec]:
    """Runs without a record (or with a failed one, when `retry_failed`)."""
    done = {r["run_id"]: r["status"] for r in records}
    return [spec for spec in study.runs()
            if spec.run_id not in done or (retry_failed and done[spec.run_id] != "ok")]


def run_study(study: StudyConfig, out: Path, *, progress: Progress | None = None, retry_failed: bool = False,
              run_timeout: float | None = None) -> list[dict[str, Any]]:
    """Run every pending run of `study` in `out` and return all records of the study's runs.

    Finished runs (ok or failed) are skipped, so re-running the same command resumes an interrupted study. What
    would fail every run alike (task, model, device, settings) raises StudyError before any run starts. The folder
    is locked while the study runs: another study on it raises FolderInUseError at once; a lock left by a killed
    process is taken over. A results line cut off by a crash is removed (its run runs again).
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    show = progress or TqdmProgress()
    try:
        with folder_lock(out, f"a study ({_command_line()})") as lock:
            if lock.taken_over is not None:
                show.note(f"{out}: taking over the lock left by {lock.taken_over.describe()}, which no longer runs")
            check_study(study)
            remove_temporaries(out, (STUDY_FILE, RESULTS_FILE))  # of writes a killed study had begun
            removed = repair_results(out)
            if removed:
                show.note(f"{out / RESULTS_FILE}: removed {removed} incomplete line(s) left by an interrupted "
                          "write; their runs run again")
            return _run_locked(study, out, show, retry_failed, run_timeout)
    except BaseException:
        if created:  # a study stopped before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _command_line() -> str:
    """How this process was started, e.g. "peftlab compare --out runs/a", for the lock holder's description."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv and sys.argv[0] else "python"


def _run_locked(study: StudyConfig, out: Path, show: Progress, retry_failed: bool,
                run_timeout: float | None) -> list[dict[str, Any]]:
    save_study(out, study)
    records = load_records(out)
    todo = pending_runs(study, records, retry_failed)
    all_runs = study.runs()
    skipped_ids = {spec.run_id for spec in all_runs} - {spec.run_id for spec in todo}
    skipped_failed = sum(r["status"] != "ok" for r in records if r["run_id"] in skipped_ids)
    show.start(total=len(all_runs), skipped=len(all_runs) - len(todo), skipped_failed=skipped_failed)
    try:
        for spec in todo:
            show.run_started(spec)
            record = run_isolated(spec, out / RUNS_DIR / spec.run_id, show.run_event, run_timeout)
            record["delta_vs_full"] = delta_vs_full(record, load_records(out))
            append_record(out, record)
            show.run_finished(record)
    finally:
        show.close()
    ids = {spec.run_id for spec in all_runs}
    return [r for r in load_records(out) if r["run_id"] in ids]


def run_isolated(spec: RunSpec, run_dir: Path, on_event: Callable[[dict[str, Any]], None],
                 timeout: float | None = None) -> dict[str, Any]:
    """Execute one run in a fresh `python -m peftlab.study.worker` process and return its record.

    A worker that dies without writing its result (killed, out of memory, timeout) yields a failed record with the
    exit status and the end of its log.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_FILE).unlink(missing_ok=True)
    (run_dir / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=1), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC_ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
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


def _died(spec: RunSpec, run_dir: Path, code: int | None, timeout: float | None) -> dict[str, Any]:
    record = base_record(spec)
    if timeout is not None:
        reason = f"run exceeded --run-timeout {timeout:g}s and was stopped"
    elif code is not None and code < 0:
        reason = f"worker process killed by signal {-code}" + (" (likely out of memory)" if code == -9 else "")
    else:
        reason = f"worker process exited with status {code} without a result"
    tail = (run_dir / LOG_FILE).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
    record.update(status="failed", error=reason + (f"; log: {' | '.join(tail)}" if tail else ""),
                  failed_phase="process", finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return record
