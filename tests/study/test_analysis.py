"""Summaries over seeds, Pareto sets and the budget answer, on hand-written result records."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftlab.study.analysis import best_balance, best_under, pareto, summarise
from peftlab.study.budget import parse_budgets


def record(method: str, seed: int, acc: float, params: int, memory: float, seconds: float) -> dict:
    return {"run_id": f"{method}-{seed}", "method": method, "method_id": method, "train_size": 100, "seed": seed,
            "status": "ok", "test_metric": acc, "trainable_params": params, "trainable_percent": params / 1e4,
            "peak_memory_mb": memory, "train_seconds": seconds, "curve_metric": "accuracy",
            "curve": [{"step": 5, "accuracy": acc - 0.1}, {"step": 10, "accuracy": acc}]}


RECORDS = [
    record("full", 0, 0.80, 1_000_000, 900, 50), record("full", 1, 0.82, 1_000_000, 900, 52),
    record("lora", 0, 0.80, 10_000, 600, 30), record("lora", 1, 0.80, 10_000, 600, 30),
    record("bitfit", 0, 0.70, 1_000, 580, 25), record("bitfit", 1, 0.72, 1_000, 580, 25),
    record("slow", 0, 0.60, 50_000, 950, 99),
    {"run_id": "broken-0", "method": "broken", "method_id": "broken", "train_size": 100, "seed": 0,
     "status": "failed", "error": "ConfigError: unknown method"},
]


def test_mean_and_std_over_seeds() -> None:
    rows = {s.method: s for s in summarise(RECORDS, ["full", "lora"])}
    assert list(rows)[:2] == ["full", "lora"]
    assert rows["full"].values["test_metric"][0] == pytest.approx(0.81)
    assert rows["full"].values["test_metric"][1] == pytest.approx(0.01414, abs=1e-4)
    assert rows["broken"].ok == 0 and rows["broken"].failed == 1 and "unknown" in rows["broken"].errors[0]
    assert rows["lora"].curve == [(5, pytest.approx(0.7)), (10, pytest.approx(0.8))]


def test_pareto_best_balance_and_budget() -> None:
    rows = summarise(RECORDS)
    assert {s.method for s in pareto(rows, ["trainable_params"], True)} == {"full", "lora", "bitfit"}
    assert {s.method for s in pareto(rows, ["trainable_params", "peak_memory_mb", "train_seconds"], True)} == \
        {"full", "lora", "bitfit"}
    pick, tol = best_balance(rows, "accuracy", True)
    assert pick.method == "lora" and tol == 0.01  # within 1 point of full, 100x fewer parameters
    assert best_under(rows, parse_budgets(["params=5k"]), True).method == "bitfit"
    assert best_under(rows, parse_budgets(["params=1%"]), True).method == "lora"
    assert best_under(rows, parse_budgets(["memory=100MB"]), True) is None


def test_report_header_gives_the_tasks_input_size() -> None:
    """The header reads the input size the task describes (images have no token length); records written before
    tasks described it fall back to the max length."""
    from peftlab.study.report import _header

    image = {**record("lora", 0, 0.9, 100, 1.0, 1.0), "task": "image", "model": "efficientnet-lite0", "steps": 10,
             "batch_size": 16, "max_length": 64, "task_info": {"input_size": "64x64 px"}}
    assert "steps of batch 16 (64x64 px) for every method" in _header(image, [image], None)[1].text
    older = {key: value for key, value in image.items() if key != "task_info"}
    assert "steps of batch 16 (max length 64) for every method" in _header(older, [older], None)[1].text


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    """A crash mid-write leaves a line without its end; the next run's record must still be read."""
    from peftlab.study.results import RESULTS_FILE, append_record, load_records

    append_record(tmp_path, {"run_id": "a", "status": "ok"})
    with open(tmp_path / RESULTS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"run_id": "b", "sta')  # torn
    append_record(tmp_path, {"run_id": "b", "status": "ok"})
    assert sorted(r["run_id"] for r in load_records(tmp_path)) == ["a", "b"]
