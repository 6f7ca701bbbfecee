"""The statistics every table of the report shares: medians, paired ratios, and bootstrap intervals of them."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Result = dict[str, Any]
Results = dict[tuple[str, str, str], Result]  # (model, config, library) -> result pooled over rounds


def median(values: Iterable[float]) -> float:
    """The median, or NaN for no values."""
    values = list(values)
    return statistics.median(values) if values else math.nan


def paired_ratios(result: Result | None, name: str = "step", reference: str = "paired_floor") -> list[float]:
    """Every (`name` / the `reference` measured next to it, same process); empty if the result has no such pairs."""
    if not result or result["status"] != "ok" or reference not in result["times"] or name not in result["times"]:
        return []
    times = result["times"]
    return [value / ref for value, ref in zip(times[name], times[reference], strict=True)]


def bootstrap_interval(statistic: Callable[..., float], *samples: Sequence[float], coverage: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(*samples)`, each sample resampled with replacement on its own.

    Seeded, so that a report rendered twice from the same raw results is identical. With few measurements (5-10 per
    process) it is a rough guide to how far a median may move between runs, not an exact confidence interval.
    """
    if any(not sample for sample in samples):
        return math.nan, math.nan
    rng = random.Random(seed)
    values = sorted(statistic(*(rng.choices(sample, k=len(sample)) for sample in samples))
                    for _ in range(resamples))
    tail = (1 - coverage) / 2
    return values[round(tail * (resamples - 1))], values[round((1 - tail) * (resamples - 1))]


def peak_ratio(ours: Result | None, theirs: Result | None) -> float:
    """Our peak RSS over theirs; NaN unless both measured."""
    if not all(r and r["status"] == "ok" for r in (ours, theirs)):
        return math.nan
    return ours["rss_peak_mb"] / theirs["rss_peak_mb"]


def ratio_of_medians(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    return median(numerator) / median(denominator)


def median_estimate(ratios: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """The median of paired ratios and its bootstrap interval."""
    return median(ratios), bootstrap_interval(median, ratios)


def versus_estimate(ours: Sequence[float], theirs: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Our median paired ratio over theirs, and the interval of that quotient (each side resampled on its own)."""
    if not ours or not theirs:
        return math.nan, (math.nan, math.nan)
    return ratio_of_medians(ours, theirs), bootstrap_interval(ratio_of_medians, ours, theirs)


def ratio_cell(value: float, interval: tuple[float, float] = (math.nan, math.nan)) -> str:
    """A ratio with its bootstrap interval, "1.08× (1.03–1.12)", or alone, "0.91×"; "—" when not measured."""
    low, high = interval
    if math.isnan(value):
        return "—"
    return f"{value:.2f}×" if math.isnan(low) else f"{value:.2f}× ({low:.2f}–{high:.2f})"
