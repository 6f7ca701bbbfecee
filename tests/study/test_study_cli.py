"""End to end through the CLI: a miniature study, its report, resuming, and failed runs that do not stop it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from peftlab.study.errors import StudyError
from tests.study.conftest import MINI, read_results, run_cli

NO_TARGET = "lora:targets=nomatch"  # a valid config whose targets match no module: fails when it is attached


def test_mini_study_resume_and_failures(tmp_path: Path) -> None:
    out = tmp_path / "study"
    assert run_cli("compare", *MINI, "--methods", "full,lora", "--budget", "params=5%", "--out", str(out)) == 0

    records = read_results(out)
    assert [r["method"] for r in records] == ["full", "lora"]
    for r in records:
        assert r["status"] == "ok", r["error"]
        assert 0.0 <= r["test_metric"] <= 1.0 and r["metric"] == "accuracy"
        assert r["trainable_params"] > 0 and 0 < r["trainable_percent"] <= 100
        assert r["peak_memory_mb"] > 0 and r["train_seconds"] > 0 and r["median_step_seconds"] > 0
        assert [p["step"] for p in r["curve"]] == [2, 4]
        assert r["adapter_bytes"] > 0 and Path(r["adapter_path"], "adapter_config.json").exists()
        assert r["latency"]["unmerged_ms"] > 0
        assert r["versions"]["torch"] and r["hardware"]["cpu_count"]
        assert r["config"]["method"]["method"] == r["method_id"]
    full, lora = records
    assert full["trainable_percent"] == 100.0 and lora["trainable_percent"] < 5
    assert lora["delta_vs_full"] == lora["test_metric"] - full["test_metric"]
    assert lora["mergeable"] and lora["latency"]["merged_ms"] > 0

    md = (out / "report.md").read_text()
    assert "| lora |" in md and "| full |" in md and "Best under your budget" in md
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page
    assert (out / "plots" / "metric_vs_params.png").exists()

    # resume: the same command again runs nothing
    start = time.perf_counter()
    assert run_cli("compare", *MINI, "--methods", "full,lora", "--out", str(out)) == 0
    assert len(read_results(out)) == 2 and time.perf_counter() - start < 15

    # a typo in --methods stops the study before any run starts
    with pytest.raises(StudyError, match="--methods 'nosuchmethod': unknown method"):
        run_cli("compare", *MINI, "--methods", "full,nosuchmethod", "--out", str(out))
    assert len(read_results(out)) == 2

    # failures are recorded with their reason and the study goes on: targets that match no module of the model,
    # and a learning rate so large that the loss becomes NaN; the finished runs are still skipped.
    assert run_cli("compare", *MINI, "--methods", f"full,{NO_TARGET},lora,bitfit", "--lr", "bitfit=1e30",
                   "--out", str(out)) == 0
    records = {r["method"]: r for r in read_results(out)}
    assert len(read_results(out)) == 4
    assert records[NO_TARGET]["status"] == "failed" and "nomatch" in records[NO_TARGET]["error"]
    assert records[NO_TARGET]["failed_phase"] == "adapt"
    assert records["bitfit"]["status"] == "failed" and "non-finite" in records["bitfit"]["error"]
    assert records["bitfit"]["failed_phase"] == "train"

    # the report is rebuilt from stored results alone, and lists the failures
    (out / "report.md").unlink()
    assert run_cli("report", str(out), "--budget", "params=1k") == 0
    md = (out / "report.md").read_text()
    assert "## Failed runs" in md and "non-finite" in md and f"| {NO_TARGET} |" in md
    assert "Incomplete study" not in md

    # an interrupted study's report says which planned runs have not finished
    results = out / "results.jsonl"
    results.write_text(results.read_text().splitlines(keepends=True)[0])
    assert run_cli("report", str(out)) == 0
    assert "Incomplete study: 1 of 4 planned runs have finished." in (out / "report.md").read_text()


def test_a_study_in_which_no_run_succeeded_fails_the_command(tmp_path: Path) -> None:
    assert run_cli("compare", *MINI, "--methods", NO_TARGET, "--out", str(tmp_path / "study")) == 1
    assert read_results(tmp_path / "study")[0]["status"] == "failed"


def test_a_training_set_smaller_than_the_batch_records_the_batch_it_used(tmp_path: Path) -> None:
    assert run_cli("compare", *MINI, "--methods", "bitfit", "--train-sizes", "4", "--no-report",
                   "--out", str(tmp_path / "study")) == 0
    assert read_results(tmp_path / "study")[0]["batch_size"] == 4  # --batch-size 8, but only 4 examples
