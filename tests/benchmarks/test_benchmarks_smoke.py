"""Smoke test of the benchmark harness: quick mode, a minuscule Llama, training and inference configurations.
Never asserts timings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RATIO_WITH_INTERVAL = re.compile(r"^\d+\.\d\d× \(\d+\.\d\d–\d+\.\d\d\)$")  # "1.08× (1.03–1.12)"


def _table_rows(report: str, header_start: str) -> list[list[str]]:
    """The data rows of the first table whose header starts with `header_start`, as lists of cells."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_quick_run_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--models", "llama-tiny",
               "--configs", "floor,lora_qv,infer", "--out", str(out)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    report = out.read_text()
    assert report.strip() == proc.stdout.strip()
    assert "## llama-tiny" in report and "torch " in report and "peft " in report
    rows = _table_rows(report, "| configuration |")
    assert [(r[0].split(":")[0], r[1]) for r in rows] == [
        ("floor", "torch"), ("LoRA r=8 q,v (dropout 0.05)", "HF PEFT"), ("LoRA r=8 q,v (dropout 0.05)", "peftlab")]
    assert rows[0][-1].startswith("A/A control"), "the floor row is the A/A control of the × floor column"
    for row in rows[1:]:
        assert row[-1] == "", f"not measured: {row}"  # the note column is empty for a measured row
    assert rows[1][2] == rows[2][2] != "—", "both libraries train the same number of parameters"
    assert RATIO_WITH_INTERVAL.match(rows[2][6]), "peftlab's row has a ratio to HF PEFT, with its interval"
    assert all(RATIO_WITH_INTERVAL.match(r[5]) for r in rows), "every row has a paired ratio to the floor"
    inference = {(r[0], r[1]): r for r in _table_rows(report, "| variant |")}
    control = inference[("untouched copy of the base (A/A control)", "torch")]
    assert RATIO_WITH_INTERVAL.match(control[3]), "the A/A control has a paired ratio"
    for library in ("HF PEFT", "peftlab"):
        assert RATIO_WITH_INTERVAL.match(inference[("LoRA merged", library)][3]), f"{library} merged: ratio to base"
    targets = {r[0]: r for r in _table_rows(report, "| target |")}
    assert sorted(targets) == sorted(["A/A control, training: floor step × floor step",
                                      "A/A control, inference: base copy × base", "LoRA q,v: step × floor",
                                      "inference, LoRA merged: × base", "inference, LoRA unmerged: × base"])
    verdict = re.compile(r"^\d+\.\d\d× \(\d+\.\d\d–\d+\.\d\d\): "
                         r"\*\*(met|missed|median (met|missed), interval .*)\*\*$")
    assert verdict.match(targets["LoRA q,v: step × floor"][2]), "a target cell: the ratio, interval and verdict"
