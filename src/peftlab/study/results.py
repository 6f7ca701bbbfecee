"""The results file: one JSON line per finished run (ok or failed), appended as runs end; the study config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from peftlab.io.atomic import write_text_atomic
from peftlab.study.errors import StudyError
from peftlab.study.plan import StudyConfig

RESULTS_FILE = "results.jsonl"
STUDY_FILE = "study.json"
SCHEMA_VERSION = 1


def append_record(out: Path, record: dict[str, Any]) -> None:
    """Append one run's record and fsync, so an interrupted study loses at most the run in progress. A torn last
    line (a crash mid-write) is ended first, so that it cannot swallow this record."""
    path = out / RESULTS_FILE
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as existing:
            existing.seek(-1, os.SEEK_END)
            torn = existing.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(("\n" if torn else "") + json.dumps(record, sort_keys=True, allow_nan=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def load_records(out: Path) -> list[dict[str, Any]]:
    """Every record of the results file (a line that is not a complete record, e.g. a write cut off by a crash, is
    skipped; `repair_results` removes it); later records of the same run id replace earlier ones."""
    path = out / RESULTS_FILE
    if not path.exists():
        return []
    by_id: dict[str, dict[str, Any]] = {}
    for line in path.read_bytes().splitlines():
        record = _record(line)
        if record is not None:
            by_id[record["run_id"]] = record
    return list(by_id.values())


def repair_results(out: Path) -> int:
    """Rewrite the results file (atomically) without its lines that are not complete records: the tail of a write
    cut off by a crash. Returns how many were removed; their runs have no record, so a resumed study runs them again.
    Call it holding the study folder's lock."""
    path = out / RESULTS_FILE
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = [line for line in data.splitlines() if line.strip()]
    complete = [line for line in lines if _record(line) is not None]
    if len(complete) == len(lines) and (not data or data.endswith(b"\n")):
        return 0
    write_text_atomic(path, "".join(line.decode("utf-8") + "\n" for line in complete))
    return len(lines) - len(complete)


def _record(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:  # torn JSON, or bytes cut inside a UTF-8 character
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run_id"), str) else None


def save_study(out: Path, study: StudyConfig) -> None:
    """Write study.json (what `peftlab report` rebuilds from)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / STUDY_FILE, json.dumps(study.to_dict(), indent=2))


def load_study(out: Path) -> Any:
    """The study config stored in `out` (a StudyConfig, or a ContinualStudy), or None for a folder with results
    only."""
    path = out / STUDY_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") == "continual":
            from peftlab.study.continual import ContinualStudy

            return ContinualStudy.from_dict(data)
        return StudyConfig.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise StudyError(f"{path} is not a readable study file ({err}); delete it to start over") from None
