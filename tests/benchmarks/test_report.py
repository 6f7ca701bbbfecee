"""The benchmark report's statistics: paired ratios, their bootstrap intervals, and the floor's A/A control row."""

from __future__ import annotations

import math
import random
import statistics

from benchmarks.jobs import Job
from benchmarks.report import pool, training_rows
from benchmarks.stats import bootstrap_interval, paired_ratios


def _ratios(n: int, seed: int, level: float = 1.1) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.gauss(0, 0.05) for _ in range(n)]


def test_interval_brackets_the_median_and_is_reproducible() -> None:
    ratios = _ratios(7, seed=1)
    low, high = bootstrap_interval(statistics.median, [ratios])
    assert min(ratios) <= low <= statistics.median(ratios) <= high <= max(ratios)
    assert (low, high) == bootstrap_interval(statistics.median, [ratios]), "seeded: the same report twice"


def test_interval_narrows_with_more_measurements() -> None:
    few = bootstrap_interval(statistics.median, [_ratios(5, seed=2)])
    many = bootstrap_interval(statistics.median, [_ratios(80, seed=2)])
    assert many[1] - many[0] < few[1] - few[0]


def test_interval_of_identical_values_is_a_point_and_of_nothing_is_nan() -> None:
    assert bootstrap_interval(statistics.median, [[1.25] * 5]) == (1.25, 1.25)
    assert all(math.isnan(v) for v in bootstrap_interval(statistics.median, []))


def test_ratio_of_two_samples_resamples_each() -> None:
    def quotient(a: list[float], b: list[float]) -> float:
        return statistics.median(a) / statistics.median(b)

    ours, theirs = [1.0, 1.1, 1.05, 0.95, 1.02], [1.5, 1.4, 1.6, 1.45, 1.55]
    low, high = bootstrap_interval(quotient, [ours], [theirs])
    assert low <= quotient(ours, theirs) <= high
    assert high < 1.0, "every resample keeps ours below theirs here"


def test_floor_row_reports_its_a_a_control() -> None:
    floor = {"status": "ok", "trainable": 0, "rss_build_mb": 100.0, "rss_peak_mb": 200.0, "note": "",
             "times": {"forward": [1.0] * 3, "backward": [1.0] * 3, "optimizer": [0.0] * 3,
                       "step": [2.0, 2.2, 1.8], "paired_floor": [2.0, 2.0, 2.0]}}
    assert paired_ratios(floor) == [[1.0, 1.1, 0.9]]
    (row,) = training_rows("m", ["floor"], {("m", "floor", "floor"): floor})
    assert row[5] == "1.00× (0.90–1.10)", "median 1.00; a resampled median is 0.90 or 1.10 with 26% each"
    assert row[-1].startswith("A/A control")


def test_interval_resamples_processes_before_pairs() -> None:
    """Two processes that measured the same code at different levels (as this machine does): the interval must reach
    both levels, not only the spread of the pairs around the pooled median."""
    slow, fast = _ratios(10, seed=3, level=1.14), _ratios(10, seed=4, level=1.02)
    pooled_pairs = bootstrap_interval(statistics.median, [slow + fast])
    by_process = bootstrap_interval(statistics.median, [slow, fast])
    assert by_process[0] < pooled_pairs[0] and by_process[1] > pooled_pairs[1]
    assert by_process[0] < 1.04 and by_process[1] > 1.12


def test_pool_keeps_each_rounds_pairs_apart() -> None:
    def floor(steps: list[float]) -> dict:
        return {"status": "ok", "trainable": 0, "total": 1, "rss_build_mb": 1.0, "rss_peak_mb": 2.0, "note": "",
                "times": {"step": steps, "paired_floor": [1.0] * len(steps)}}

    jobs = [Job(model="m", config="floor", library="floor", round=r) for r in (0, 1)]
    pooled = pool([(jobs[0], floor([1.0, 1.2])), (jobs[1], floor([1.1]))])[("m", "floor", "floor")]
    assert pooled["times"]["step"] == [1.0, 1.2, 1.1]
    assert paired_ratios(pooled) == [[1.0, 1.2], [1.1]]
