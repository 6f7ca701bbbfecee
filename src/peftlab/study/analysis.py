"""From run records to per-method summaries (mean ± std over seeds), Pareto sets and the budget answer."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from peftlab.study.budget import Budget

PERCENT_METRICS = ("accuracy", "exact_match", "macro_f1")  # stored as fractions, shown as percent

# summary field -> record field averaged over a method's successful seeds
MEAN_FIELDS = {
    "test_metric": "test_metric", "delta_vs_full": "delta_vs_full", "trainable_params": "trainable_params",
    "trainable_percent": "trainable_percent", "peak_memory_mb": "peak_memory_mb", "train_seconds": "train_seconds",
    "median_step_seconds": "median_step_seconds", "examples_per_second": "examples_per_second",
    "adapter_bytes": "adapter_bytes", "train_examples": "train_examples", "activation_density": "activation_density",
}
RESOURCES = {"trainable_params": "trainable parameters", "peak_memory_mb": "peak memory",
             "train_seconds": "training time"}


@dataclasses.dataclass
class Summary:
    """One method at one train size, over seeds. `values[f]` = (mean, std) of field f over successful runs."""

    method: str
    method_id: str
    train_size: int | None
    ok: int
    failed: int
    errors: list[str]
    values: dict[str, tuple[float, float]]
    latency: dict[str, tuple[float, float] | None]
    curve: list[tuple[int, float]]  # (step, mean validation `curve_metric`)
    curve_metric: str
    mergeable: bool | None

    def mean(self, field: str) -> float | None:
        pair = self.values.get(field)
        return pair[0] if pair else None

    def as_mapping(self) -> dict[str, Any]:
        return {k: v[0] for k, v in self.values.items()}


def _mean_std(values: Sequence[float]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _mean_curve(records: Sequence[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for record in records:
        for point in record.get("curve") or []:
            if metric in point:
                by_step[int(point["step"])].append(point[metric])
    return [(step, statistics.fmean(v)) for step, v in sorted(by_step.items())]


def summarise(records: Iterable[dict[str, Any]], method_order: Sequence[str] = ()) -> list[Summary]:
    """One Summary per (method, train size), methods in `method_order` (then first-seen order)."""
    groups: dict[tuple[str, int | None], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["method"], record.get("train_size"))].append(record)
    rank = {m: i for i, m in enumerate(method_order)}
    keys = sorted(groups, key=lambda k: (rank.get(k[0], len(rank)), _size_key(k[1])))
    out = []
    for method, size in keys:
        runs = groups[(method, size)]
        good = [r for r in runs if r.get("status") == "ok"]
        values = {name: pair for name, field in MEAN_FIELDS.items()
                  if (pair := _mean_std([r.get(field) for r in good])) is not None}
        latency = {kind: _mean_std([(r.get("latency") or {}).get(f"{kind}_ms") for r in good])
                   for kind in ("unmerged", "merged")}
        curve_metric = good[0].get("curve_metric", "") if good else ""
        mergeable = next((r.get("mergeable") for r in runs if r.get("mergeable") is not None), None)
        out.append(Summary(method, runs[0].get("method_id", method), size, len(good), len(runs) - len(good),
                           [r["error"] for r in runs if r.get("status") != "ok" and r.get("error")],
                           values, latency, _mean_curve(good, curve_metric), curve_metric, mergeable))
    return out


def _size_key(size: int | None) -> float:
    return math.inf if size is None else float(size)


def largest_size(summaries: Sequence[Summary]) -> int | None:
    """The largest train size of the study (None = "all" counts as largest)."""
    return max((s.train_size for s in summaries), key=_size_key, default=None)


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    return a > b if higher_is_better else a < b


def pareto(summaries: Sequence[Summary], resources: Sequence[str], higher_is_better: bool) -> list[Summary]:
    """Methods not dominated on (test metric, each of `resources` lower-is-better); failed methods excluded."""
    rows = [s for s in summaries if s.mean("test_metric") is not None and all(s.mean(r) is not None for r in resources)]

    def dominates(a: Summary, b: Summary) -> bool:
        ma, mb = a.mean("test_metric"), b.mean("test_metric")
        no_worse = (ma == mb or _better(ma, mb, higher_is_better)) and all(a.mean(r) <= b.mean(r) for r in resources)
        strictly = _better(ma, mb, higher_is_better) or any(a.mean(r) < b.mean(r) for r in resources)
        return no_worse and strictly

    return [s for s in rows if not any(dominates(o, s) for o in rows if o is not s)]


def tolerance(metric: str, best: float) -> float:
    """What counts as "as good as the best": 1 point for a [0, 1] score, else 1% of the best value."""
    return 0.01 if metric in ("accuracy", "exact_match", "macro_f1") else 0.01 * abs(best)


def best_balance(summaries: Sequence[Summary], metric: str, higher_is_better: bool) -> tuple[Summary | None, float]:
    """Among methods within `tolerance` of the best test metric, the one with the fewest trainable parameters
    (ties: lower peak memory). Returns (method, tolerance used)."""
    rows = [s for s in summaries if s.mean("test_metric") is not None]
    if not rows:
        return None, 0.0
    pick = max if higher_is_better else min
    best = pick(s.mean("test_metric") for s in rows)
    tol = tolerance(metric, best)
    close = [s for s in rows if abs(s.mean("test_metric") - best) <= tol + 1e-12]
    return min(close, key=lambda s: (s.mean("trainable_params") or math.inf, s.mean("peak_memory_mb") or math.inf)), tol


def best_under(summaries: Sequence[Summary], budgets: Sequence[Budget], higher_is_better: bool) -> Summary | None:
    """The best test metric among methods whose mean measurements fit every budget."""
    fits = [s for s in summaries
            if s.mean("test_metric") is not None and all(b.allows(s.as_mapping()) for b in budgets)]
    if not fits:
        return None
    sign = 1.0 if higher_is_better else -1.0  # ties: fewer trainable parameters
    return max(fits, key=lambda s: (sign * s.mean("test_metric"), -(s.mean("trainable_params") or 0.0)))


def delta_vs_full(record: dict[str, Any], records: list[dict[str, Any]]) -> float | None:
    """Test metric minus that of full fine-tuning run under the same task spec, settings, train size and seed (if
    recorded; a folder may hold runs of studies with other settings)."""
    if record.get("status") != "ok":
        return None
    for other in records:
        if (other.get("method_id") == "full" and other.get("status") == "ok"
                and all(other.get(k) == record.get(k) for k in ("task", "model", "train_size", "seed", "steps"))
                and _setting(other) == _setting(record)):
            return record["test_metric"] - other["test_metric"]
    return None


def _setting(record: dict[str, Any]) -> Any:
    """What a run was run under, apart from its method: the task spec and the run settings."""
    run = record.get("config", {}).get("run", {})
    return run.get("task"), run.get("settings")
