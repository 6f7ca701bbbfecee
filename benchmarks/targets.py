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
from functools import partial

from benchmarks.stats import Results, median_estimate, paired_ratios, peak_ratio, ratio_cell, versus_estimate

Estimate = tuple[float, tuple[float, float]]  # (value, (low, high)); NaN interval for a single figure


Measure = Callable[[Results, str, str], Estimate]  # (results, model, configuration) -> estimate


@dataclass(frozen=True)
class Target:
    """One row, shown when the run measured `config`; `bound` None marks a context (A/A) row."""

    label: str
    config: str
    measure: Measure
    bound: float | None


def _versus_floor(results: Results, model: str, config: str, library: str = "peftlab") -> Estimate:
    return median_estimate(paired_ratios(results.get((model, config, library))))


def _versus_hf(results: Results, model: str, config: str) -> Estimate:
    return versus_estimate(paired_ratios(results.get((model, config, "peftlab"))),
                           paired_ratios(results.get((model, config, "hf"))))


def _peak_versus_hf(results: Results, model: str, config: str) -> Estimate:
    return peak_ratio(results.get((model, config, "peftlab")), results.get((model, config, "hf"))), (math.nan, math.nan)


def _latency(library: str, name: str, reference: str) -> Measure:
    def measure(results: Results, model: str, config: str) -> Estimate:
        return median_estimate(paired_ratios(results.get((model, config, library)), name, reference))

    return measure


TARGETS: tuple[Target, ...] = (
    Target("A/A control, training: floor step × floor step", "floor", partial(_versus_floor, library="floor"), None),
    Target("A/A control, inference: base copy × base", "infer", _latency("base", "copy_latency", "latency"), None),
    Target("LoRA all linear, dropout 0.05: step × HF PEFT", "lora_all", _versus_hf, 0.85),
    Target("LoRA all linear, dropout 0.05: peak RSS × HF PEFT", "lora_all", _peak_versus_hf, 0.90),
    Target("LoRA all linear, dropout 0: step × floor", "lora_all_nodrop", _versus_floor, 1.10),
    Target("LoRA all linear, dropout 0: step × HF PEFT", "lora_all_nodrop", _versus_hf, 1.00),
    Target("LoRA q,v: step × floor", "lora_qv", _versus_floor, 1.05),
    Target("DoRA q,v: step × HF PEFT", "dora_qv", _versus_hf, 0.80),
    Target("DoRA q,v: peak RSS × HF PEFT", "dora_qv", _peak_versus_hf, 1.00),
    Target("DoRA q,v, dropout 0: step × HF PEFT", "dora_qv_nodrop", _versus_hf, 0.80),
    Target("DoRA q,v, dropout 0: peak RSS × HF PEFT", "dora_qv_nodrop", _peak_versus_hf, 1.00),
    Target("IA3: peak RSS × HF PEFT", "ia3", _peak_versus_hf, 1.00),
    Target("prompt tuning: peak RSS × HF PEFT", "prompt", _peak_versus_hf, 1.00),
    Target("prefix tuning: peak RSS × HF PEFT", "prefix", _peak_versus_hf, 1.00),
    Target("inference, LoRA merged: × base", "infer", _latency("peftlab", "merged_latency", "paired_base_merged"),
           1.01),
    Target("inference, LoRA unmerged: × base", "infer", _latency("peftlab", "latency", "paired_base"), 1.05),
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
        if target.config not in configs:
            continue
        bound = "resolution" if target.bound is None else f"≤ {target.bound:.2f}"
        rows.append((target.label, bound,
                     *(cell(target.measure(results, m, target.config), target.bound) for m in models)))
    return rows
