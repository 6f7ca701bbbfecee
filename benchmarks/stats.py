"""The statistics every table of the report shares: medians, paired ratios, and bootstrap intervals of them."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Result = dict[str, Any]
Results = dict[tuple[str, str, str], Result]  # (model, config, library) -> result pooled over rounds
Groups = list[list[float]]  # measurements grouped by the worker process (round) that made them


def median(values: Iterable[float]) -> float:
    """The median, or NaN for no values."""
    values = list(values)
    return statistics.median(values) if values else math.nan


def paired_ratios(result: Result | None, name: str = "step", reference: str = "paired_floor") -> Groups:
    """Every (`name` / the `reference` measured next to it, same process), one list per worker process (round);
    empty if the result has no such pairs."""
    if not result or result["status"] != "ok" or reference not in result["times"] or name not in result["times"]:
        return []
    return [[value / ref for value, ref in zip(times[name], times[reference], strict=True)]
            for times in result.get("rounds", [result["times"]])]


def flat(groups: Iterable[Sequence[float]]) -> list[float]:
    """All measurements of every group, in one list."""
    return [value for group in groups for value in group]


def bootstrap_interval(statistic: Callable[..., float], *samples: Groups, coverage: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(*flat samples)`, each sample resampled on its own, in two stages:
    its groups (worker processes) with replacement, then the measurements within each drawn group.

    Two stages because a process's ratios share that process's conditions (where its memory landed, the allocator's
    state, the machine's load while it ran), so they move together: LoRA on every linear layer of the benchmark's
    Llama measured 1.10-1.21× the floor over the ten pairs of one process and 1.03-1.11× over those of the next
    (run N in BENCHMARKS.md). Resampling the pairs alone would treat ten pairs of one process as ten independent
    runs. With one process per configuration the first stage has nothing to draw from, and the interval covers
    step-to-step variation only.
    Seeded, so that a report rendered twice from the same raw results is identical. With few measurements (5-10 per
    process, 1-3 processes) it is a rough guide to how far a median may move between runs, not an exact confidence
    interval.
    """
    samples = tuple([group for group in sample if group] for sample in samples)
    if any(not sample for sample in samples):
        return math.nan, math.nan
    rng = random.Random(seed)

    def resample(groups: Groups) -> list[float]:
        return flat(rng.choices(group, k=len(group)) for group in rng.choices(groups, k=len(groups)))

    values = sorted(statistic(*(resample(sample) for sample in samples)) for _ in range(resamples))
    tail = (1 - coverage) / 2
    return values[round(tail * (resamples - 1))], values[round((1 - tail) * (resamples - 1))]


def peak_ratio(ours: Result | None, theirs: Result | None) -> float:
    """Our peak RSS over theirs; NaN unless both measured."""
    if not all(r and r["status"] == "ok" for r in (ours, theirs)):
        return math.nan
    return ours["rss_peak_mb"] / theirs["rss_peak_mb"]


def ratio_of_medians(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    return median(numerator) / median(denominator)


def median_estimate(ratios: Groups) -> tuple[float, tuple[float, float]]:
    """The median of paired ratios (all processes together) and its bootstrap interval."""
    return median(flat(ratios)), bootstrap_interval(median, ratios)


def versus_estimate(ours: Groups, theirs: Groups) -> tuple[float, tuple[float, float]]:
    """Our median paired ratio over theirs, and the interval of that quotient (each side resampled on its own)."""
    all_ours, all_theirs = flat(ours), flat(theirs)
    if not all_ours or not all_theirs:
        return math.nan, (math.nan, math.nan)
    return ratio_of_medians(all_ours, all_theirs), bootstrap_interval(ratio_of_medians, ours, theirs)


def ratio_cell(value: float, interval: tuple[float, float] = (math.nan, math.nan)) -> str:
    """A ratio with its bootstrap interval, "1.08× (1.03–1.12)", or alone, "0.91×"; "—" when not measured."""
    low, high = interval
    if math.isnan(value):
        return "—"
    return f"{value:.2f}×" if math.isnan(low) else f"{value:.2f}× ({low:.2f}–{high:.2f})"
