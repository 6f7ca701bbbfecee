"""The results file: a line cut off by a crash is removed when a study resumes, not just skipped when read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftlab.study.results import RESULTS_FILE, append_record, load_records, repair_results
from tests.study.conftest import MINI, parse, run_cli


def test_a_torn_last_line_is_removed_and_the_complete_records_kept(tmp_path: Path) -> None:
    append_record(tmp_path, {"run_id": "a", "status": "ok", "score": float("nan")})
    append_record(tmp_path, {"run_id": "b", "status": "failed"})
    path = tmp_path / RESULTS_FILE
    complete = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(b'{"run_id": "c", "status": "o')  # a crash in the middle of the third write
    assert [r["run_id"] for r in load_records(tmp_path)] == ["a", "b"]
    assert repair_results(tmp_path) == 1
    assert path.read_bytes() == complete
    assert repair_results(tmp_path) == 0


def test_lines_that_are_no_records_are_removed_wherever_they_are(tmp_path: Path) -> None:
    path = tmp_path / RESULTS_FILE
    path.write_bytes(b'{"run_id": "a", "status": "ok"}\n{"run_id": "b", "sta\n[1, 2]\n\xff\xfe\n{"run_id": "d"}')
    assert repair_results(tmp_path) == 3
    assert path.read_text() == '{"run_id": "a", "status": "ok"}\n{"run_id": "d"}\n'


def test_a_resumed_study_repairs_its_results_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every planned run has a record, so resuming runs nothing; the torn line left by a crash is removed."""
    from peftlab.study.cli import study_from_args

    out = tmp_path / "study"
    argv = ("compare", *MINI, "--methods", "bitfit", "--no-report", "--out", str(out))
    out.mkdir()
    for spec in study_from_args(parse(*argv)).runs():
        append_record(out, {"run_id": spec.run_id, "status": "failed", "error": "earlier"})
    with open(out / RESULTS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"run_id": "torn')
    assert run_cli(*argv) == 1  # no run succeeded (all were recorded as failed)
    assert "removed 1 incomplete line(s) left by an interrupted write" in capsys.readouterr().out
    lines = (out / RESULTS_FILE).read_text().splitlines(keepends=True)
    assert len(lines) == 1 and json.loads(lines[0])["error"] == "earlier" and lines[0].endswith("\n")
