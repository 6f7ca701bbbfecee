"""The report's targets table: each issue #5 target read off a run, with a verdict the interval can settle."""

from __future__ import annotations

import math

from benchmarks.targets import target_rows, verdict


def test_verdict_is_settled_only_when_the_interval_is_on_one_side() -> None:
    assert verdict((0.78, (0.72, 0.84)), 0.85) == "met"
    assert verdict((0.88, (0.86, 0.93)), 0.85) == "missed"
    assert verdict((0.81, (0.73, 0.87)), 0.85) == "median met, interval to 0.87"
    assert verdict((1.11, (1.04, 1.24)), 1.10) == "median missed, interval from 1.04"


def test_verdict_compares_printed_values_and_single_figures() -> None:
    assert verdict((1.1004, (1.09, 1.1049)), 1.10) == "met", "printed as 1.10×: within ≤ 1.10"
    assert verdict((0.91, (math.nan, math.nan)), 0.90) == "missed"
    assert verdict((0.90, (math.nan, math.nan)), 0.90) == "met"
    assert verdict((math.nan, (math.nan, math.nan)), 0.90) == "not measured"


def _training(steps: list[float], floors: list[float], peak: float) -> dict:
    return {"status": "ok", "rss_peak_mb": peak, "times": {"step": steps, "paired_floor": floors}}


def test_rows_follow_the_configurations_the_run_measured() -> None:
    results = {("m", "floor", "floor"): _training([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], 100.0),
               ("m", "lora_qv", "peftlab"): _training([1.03, 1.04, 1.02], [1.0, 1.0, 1.0], 90.0),
               ("m", "lora_qv", "hf"): _training([1.2, 1.2, 1.2], [1.0, 1.0, 1.0], 100.0)}
    rows = target_rows(["m"], ["floor", "lora_qv"], results)
    assert [row[0] for row in rows] == ["A/A control, training: floor step × floor step", "LoRA q,v: step × floor"]
    assert rows[0][1:] == ("resolution", "1.00× (1.00–1.00)")
    assert rows[1][1:] == ("≤ 1.05", "1.03× (1.02–1.04): **met**")


def test_a_model_without_the_configuration_reads_not_measured() -> None:
    results = {("a", "dora_qv", "peftlab"): _training([1.1] * 3, [1.0] * 3, 90.0),
               ("a", "dora_qv", "hf"): _training([1.5] * 3, [1.0] * 3, 100.0)}
    rows = target_rows(["a", "b"], ["dora_qv"], results)
    assert rows[0] == ("DoRA q,v: step × HF PEFT", "≤ 0.80", "0.73× (0.73–0.73): **met**", "not measured")
    assert rows[1] == ("DoRA q,v: peak RSS × HF PEFT", "≤ 1.00", "0.90×: **met**", "not measured")
