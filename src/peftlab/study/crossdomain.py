"""The survey's numbers across domains: each domain's summaries, each method's score relative to full fine-tuning
(per seed, then mean ± std), ranks, and the tie rule (a difference inside the seeds' spread is a tie)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from peftlab.study import analysis
from peftlab.study.analysis import Summary
from peftlab.study.results import load_records, load_study

Pair = tuple[float, float]  # (mean, std over seeds)


@dataclasses.dataclass
class DomainResult:
    """One domain's study: its records and summaries, and per method at the largest train size: the score
    relative to full fine-tuning and the rank (1 = best mean test metric)."""

    name: str
    area: str
    description: str
    records: list[dict[str, Any]]
    summaries: list[Summary]
    metric: str
    higher_is_better: bool
    main_size: int | None
    relative: dict[str, Pair | None]
    rank: dict[str, int]

    @property
    def main(self) -> list[Summary]:
        return [s for s in self.summaries if s.train_size == self.main_size]

    def summary(self, method: str, size: int | None = None) -> Summary | None:
        size = self.main_size if size is None else size
        return next((s for s in self.summaries if s.method == method and s.train_size == size), None)

    @property
    def sizes(self) -> list[int | None]:
        return sorted({s.train_size for s in self.summaries}, key=analysis._size_key)


def study_records(folder: Path) -> tuple[Any, list[dict[str, Any]]]:
    """A study folder's config and the records of its planned runs (with delta_vs_full recomputed)."""
    study = load_study(folder)
    records = load_records(folder)
    if study is not None:
        ids = {spec.run_id for spec in study.runs()}
        records = [r for r in records if r["run_id"] in ids]
    return study, [dict(r, delta_vs_full=analysis.delta_vs_full(r, records)) for r in records]


def load_domain(folder: Path, name: str, area: str = "", description: str = "") -> DomainResult | None:
    """The domain's result, or None when no run of it has a record yet."""
    study, records = study_records(folder)
    if not records:
        return None
    order = [m.label for m in study.methods] if study is not None else []
    summaries = analysis.summarise(records, order)
    info = next((r for r in records if r.get("status") == "ok"), records[0])
    metric, higher = info.get("metric") or "accuracy", info.get("higher_is_better", True)
    main_size = analysis.largest_size(summaries)
    main = [s for s in summaries if s.train_size == main_size]
    return DomainResult(name, area, description, records, summaries, metric, higher, main_size,
                        {s.method: relative_to_full(records, s.method, main_size, higher) for s in main},
                        ranks(main, higher))


def relative_to_full(records: list[dict[str, Any]], method: str, size: int | None, higher: bool) -> Pair | None:
    """Mean ± std over seeds of the method's test metric relative to full fine-tuning's with the same seed:
    method / full when higher is better, full / method otherwise (so > 1 always means better than full)."""
    full = {r["seed"]: r["test_metric"] for r in records
            if r.get("method_id") == "full" and r.get("train_size") == size and r.get("status") == "ok"}
    ratios = []
    for r in records:
        if r.get("method") == method and r.get("train_size") == size and r.get("status") == "ok" and r["seed"] in full:
            num, den = (r["test_metric"], full[r["seed"]]) if higher else (full[r["seed"]], r["test_metric"])
            if den and math.isfinite(num) and math.isfinite(den):
                ratios.append(num / den)
    return mean_std(ratios)


def mean_std(values: list[float]) -> Pair | None:
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ranks(rows: list[Summary], higher: bool) -> dict[str, int]:
    """1 = best mean test metric; methods without a successful run get no rank."""
    scored = [s for s in rows if s.mean("test_metric") is not None]
    scored.sort(key=lambda s: -s.mean("test_metric") if higher else s.mean("test_metric"))
    return {s.method: i + 1 for i, s in enumerate(scored)}


def tie(a: Pair, b: Pair) -> bool:
    """Two means are tied when their difference is inside the seeds' spread: |mean_a - mean_b| <= std_a + std_b
    (the ±1 std bars overlap). With one seed the spread is unknown (0), so only equal means tie."""
    return abs(a[0] - b[0]) <= a[1] + b[1] + 1e-12


def compare(a: Pair, b: Pair, higher: bool) -> str:
    """"better", "worse" or "tie" for a against b."""
    if tie(a, b):
        return "tie"
    return "better" if (a[0] > b[0]) == higher else "worse"


def metric_pair(domain: DomainResult, method: str, size: int | None = None) -> Pair | None:
    s = domain.summary(method, size)
    return s.values.get("test_metric") if s is not None else None


def methods_of(domains: list[DomainResult]) -> list[str]:
    """Every method of the domains, in first-seen order."""
    return list(dict.fromkeys(s.method for d in domains for s in d.summaries))


def mean_rank(domains: list[DomainResult]) -> dict[str, float]:
    """Mean rank of each method over the domains where it has one."""
    by_method: dict[str, list[int]] = defaultdict(list)
    for d in domains:
        for method, rank in d.rank.items():
            by_method[method].append(rank)
    return {m: statistics.fmean(v) for m, v in by_method.items()}
