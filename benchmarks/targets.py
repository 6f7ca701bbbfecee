"""The speed and memory targets of issue #5, read off one run's results: one row per target, one column per model.

Each target is a ratio with an upper bound. A cell gives the measured ratio, its 95% bootstrap interval where the
ratio has pairs behind it, and a verdict: "met" when the whole interval is within the bound, "missed" when it lies
wholly beyond it, and otherwise "median met" / "median missed" with the far end of the interval, so a reader sees at
once which targets this run settles and which it leaves to the machine's noise. Values are compared as printed (two
decimals). Two A/A rows, what two identical measurements give, come first: they are the resolution of the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.stats import Results, median_estimate, paired_ratios, ratio_cell, versus_estimate

Estimate = tuple[float, tuple[float, float]]  # (value, (low, high)); NaN interval for a single figure
NOT_MEASURED: Estimate = (math.nan, (math.nan, math.nan))


@dataclass(frozen=True)
class Target:
    """One row: `measure(results, model)` gives the estimate; `bound` None marks a context (A/A) row."""

    label: str
    measure: Callable[[Results, str], Estimate]
    bound: float | None
    configs: tuple[str, ...]  # the run must include these for the row to appear


def _floor_ratio(config: str, library: str = "peftlab") -> Callable[[Results, str], Estimate]:
    def measure(results: Results, model: str) -> Estimate:
        return median_estimate(paired_ratios(results.get((model, config, library))))

    return measure


def _versus_hf(config: str) -> Callable[[Results, str], Estimate]:
    def measure(results: Results, model: str) -> Estimate:
        return versus_estimate(paired_ratios(results.get((model, config, "peftlab"))),
                               paired_ratios(results.get((model, config, "hf"))))

    return measure


def _peak_versus_hf(config: str) -> Callable[[Results, str], Estimate]:
    def measure(results: Results, model: str) -> Estimate:
        ours, theirs = results.get((model, config, "peftlab")), results.get((model, config, "hf"))
        if not all(r and r["status"] == "ok" for r in (ours, theirs)):
            return NOT_MEASURED
        return ours["rss_peak_mb"] / theirs["rss_peak_mb"], (math.nan, math.nan)

    return measure


def _inference(library: str, name: str, reference: str) -> Callable[[Results, str], Estimate]:
    def measure(results: Results, model: str) -> Estimate:
        return median_estimate(paired_ratios(results.get((model, "infer", library)), name, reference))

    return measure


TARGETS: tuple[Target, ...] = (
    Target("A/A control, training: floor step × floor step", _floor_ratio("floor", "floor"), None, ("floor",)),
    Target("A/A control, inference: base copy × base", _inference("base", "copy_latency", "latency"), None,
           ("infer",)),
    Target("LoRA all linear, dropout 0.05: step × HF PEFT", _versus_hf("lora_all"), 0.85, ("lora_all",)),
    Target("LoRA all linear, dropout 0.05: peak RSS × HF PEFT", _peak_versus_hf("lora_all"), 0.90, ("lora_all",)),
    Target("LoRA all linear, dropout 0: step × floor", _floor_ratio("lora_all_nodrop"), 1.10, ("lora_all_nodrop",)),
    Target("LoRA all linear, dropout 0: step × HF PEFT", _versus_hf("lora_all_nodrop"), 1.00, ("lora_all_nodrop",)),
    Target("LoRA q,v: step × floor", _floor_ratio("lora_qv"), 1.05, ("lora_qv",)),
    Target("DoRA q,v: step × HF PEFT", _versus_hf("dora_qv"), 0.80, ("dora_qv",)),
    Target("DoRA q,v: peak RSS × HF PEFT", _peak_versus_hf("dora_qv"), 1.00, ("dora_qv",)),
    Target("IA3: peak RSS × HF PEFT", _peak_versus_hf("ia3"), 1.00, ("ia3",)),
    Target("prompt tuning: peak RSS × HF PEFT", _peak_versus_hf("prompt"), 1.00, ("prompt",)),
    Target("prefix tuning: peak RSS × HF PEFT", _peak_versus_hf("prefix"), 1.00, ("prefix",)),
    Target("inference, LoRA merged: × base", _inference("peftlab", "merged_latency", "paired_base_merged"), 1.01,
           ("infer",)),
    Target("inference, LoRA unmerged: × base", _inference("peftlab", "latency", "paired_base"), 1.05, ("infer",)),
)


def verdict(estimate: Estimate, bound: float) -> str:
    """"met" / "missed" when the interval settles it, else the median's verdict and how far the interval reaches."""
    value, (low, high) = estimate
    if math.isnan(value):
        return "not measured"
    value, low, high = round(value, 2), round(low, 2), round(high, 2)
    if math.isnan(low):
        return "met" if value <= bound else "missed"
    if high <= bound:
        return "met"
    if low > bound:
        return "missed"
    return f"median met, interval to {high:.2f}" if value <= bound else f"median missed, interval from {low:.2f}"


def cell(estimate: Estimate, bound: float | None) -> str:
    if bound is None:
        return ratio_cell(*estimate)
    text = verdict(estimate, bound)
    return text if text == "not measured" else f"{ratio_cell(*estimate)}: **{text}**"


def target_rows(models: Sequence[str], configs: Sequence[str], results: Results) -> list[Sequence[object]]:
    """One row per target whose configurations this run measured: label, bound, one cell per model."""
    rows: list[Sequence[object]] = []
    for target in TARGETS:
        if not all(config in configs for config in target.configs):
            continue
        bound = "resolution" if target.bound is None else f"≤ {target.bound:.2f}"
        rows.append((target.label, bound, *(cell(target.measure(results, m), target.bound) for m in models)))
    return rows
