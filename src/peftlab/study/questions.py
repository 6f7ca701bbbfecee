"""The survey's research questions answered in sentences generated from the measured numbers.

RQ1: how do the methods compare in parameter efficiency and performance across tasks?
RQ2: what are the trade-offs and limits in each domain?
RQ3: which methods give the best balance of accuracy, training speed and resource use across applications?
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

from peftlab.study import analysis
from peftlab.study.analysis import Summary
from peftlab.study.crossdomain import DomainResult, mean_rank, metric_pair, tie
from peftlab.study.report import fmt_metric


def _names(items: list[str]) -> str:
    return ", ".join(f"`{m}`" for m in items) if items else "none"


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties)."""
    if len(xs) < 3:
        return None

    def rank(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = rank(xs), rank(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm else None


def _seeds(domain: DomainResult) -> int:
    return len({r["seed"] for r in domain.records})


def tied_with_best(domain: DomainResult) -> tuple[str | None, list[str]]:
    """The best method at the largest size and the methods tied with it."""
    best = next((m for m, r in domain.rank.items() if r == 1), None)
    if best is None:
        return None, []
    top = metric_pair(domain, best)
    return best, [m for m in domain.rank if m != best and tie(metric_pair(domain, m), top)]


def rq1(domains: list[DomainResult]) -> list[str]:
    if not domains:
        return ["No domain has results yet."]
    ranks = sorted(mean_rank(domains).items(), key=lambda kv: kv[1])
    shown = ", ".join(f"`{m}` {r:.1f}" for m, r in ranks)
    out = [(f"Over the {len(domains)} domains measured ({', '.join(d.name for d in domains)}), the mean rank of each "
            f"method (1 = best mean test score at the domain's largest train size) is: {shown}.")]
    pairs = [(d, s) for d in domains for s in d.main
             if d.relative.get(s.method) is not None and s.mean("trainable_percent") and s.method_id != "full"]
    small = [(d, s) for d, s in pairs if s.mean("trainable_percent") <= 1.0]
    if small:
        rel = [d.relative[s.method][0] for d, s in small]
        best_d, best_s = max(small, key=lambda p: p[0].relative[p[1].method][0])
        out.append(f"Runs that train at most 1% of the parameters reach on average {statistics.fmean(rel):.3f} of full "
                   f"fine-tuning's score (from {min(rel):.3f} to {max(rel):.3f}); the highest is `{best_s.method}` on "
                   f"{best_d.name} ({best_d.relative[best_s.method][0]:.3f}).")
    beat = [f"`{s.method}` on {d.name}" for d, s in pairs
            if d.relative[s.method][0] > 1 and not tie(d.relative[s.method], (1.0, 0.0))]
    out.append(f"Outside the seeds' spread, full fine-tuning is beaten by: {', '.join(beat) if beat else 'no method'}.")
    rho = _spearman([math.log10(s.mean("trainable_percent")) for _, s in pairs],
                    [d.relative[s.method][0] for d, s in pairs])
    if rho is not None:
        strength = "weak" if abs(rho) < 0.3 else "moderate" if abs(rho) < 0.6 else "strong"
        out.append(f"Across all method-domain pairs, the rank correlation between the share of trained parameters "
                   f"and the score relative to full fine-tuning is ρ = {rho:+.2f} ({strength}): "
                   + ("training more parameters went with higher scores." if rho > 0.3 else
                      "training more parameters went with lower scores." if rho < -0.3 else
                      "how many parameters a method trains says little about how well it does here."))
    return out


def rq2(domains: list[DomainResult]) -> list[str]:
    out = []
    for d in domains:
        best, tied = tied_with_best(d)
        if best is None:
            out.append(f"**{d.name}**: no run succeeded.")
            continue
        alone = (", ahead of every other method beyond the spread" if _seeds(d) > 1 else
                 ", ahead of the others (one seed: no spread to call a tie)")
        text = (f"**{d.name}** ({d.area}, {d.metric}): best `{best}` at "
                f"{fmt_metric(d.metric, metric_pair(d, best))}" + (f", tied with {_names(tied)}" if tied else alone))
        relative = {m: r for m, r in d.relative.items() if r is not None and m != "full"}
        if relative:
            worst = min(relative, key=lambda m: relative[m][0])
            text += f"; lowest relative to full fine-tuning: `{worst}` ({relative[worst][0]:.3f})"
        failed = [s for s in d.main if s.ok == 0 and s.failed]
        if failed:
            reasons = "; ".join(f"`{s.method}`: {s.errors[0].split(':')[0]}" for s in failed)
            text += f"; cannot run here: {reasons}"
        memory = [s.mean("peak_memory_mb") for s in d.main if s.mean("peak_memory_mb")]
        seconds = [s.mean("train_seconds") for s in d.main if s.mean("train_seconds")]
        if memory and seconds:
            text += (f"; peak memory {min(memory):.0f}-{max(memory):.0f} MB, training time "
                     f"{min(seconds):.1f}-{max(seconds):.1f} s")
        sizes = d.sizes
        if len(sizes) > 1:
            sign = 1 if d.higher_is_better else -1
            gains = [sign * (metric_pair(d, s.method, sizes[-1])[0] - metric_pair(d, s.method, sizes[0])[0])
                     for s in d.main if metric_pair(d, s.method, sizes[0]) and metric_pair(d, s.method, sizes[-1])]
            if gains:
                scale, unit = (100, " points") if d.metric in analysis.PERCENT_METRICS else (1, "")
                text += (f"; from {sizes[0]} to {sizes[-1] or 'all'} training examples the median method "
                         f"{'gained' if statistics.median(gains) >= 0 else 'lost'} "
                         f"{abs(statistics.median(gains)) * scale:.3g}{unit}")
        out.append(text + ".")
    return out or ["No domain has results yet."]


def balanced(domain: DomainResult) -> tuple[Summary | None, list[Summary]]:
    """The best balance of a domain: among the methods as good as the best (tied with it inside the seeds' spread,
    or within 1 point / 1%), the one training the fewest parameters (then: lower peak memory); and that set."""
    rows = [s for s in domain.main if s.mean("test_metric") is not None]
    if not rows:
        return None, []
    sign = 1 if domain.higher_is_better else -1
    best = max(rows, key=lambda s: sign * s.mean("test_metric"))
    tol = analysis.tolerance(domain.metric, best.mean("test_metric"))
    close = [s for s in rows if abs(s.mean("test_metric") - best.mean("test_metric")) <= tol + 1e-12
             or tie(s.values["test_metric"], best.values["test_metric"])]
    pick = min(close, key=lambda s: (s.mean("trainable_params") or math.inf, s.mean("peak_memory_mb") or math.inf))
    return pick, close


def rq3(domains: list[DomainResult]) -> list[str]:
    picks: Counter[str] = Counter()
    fronts: Counter[str] = Counter()
    per_domain = []
    for d in domains:
        pick, close = balanced(d)
        if pick is None:
            continue
        picks[pick.method] += 1
        for s in analysis.pareto(d.main, list(analysis.RESOURCES), d.higher_is_better):
            fronts[s.method] += 1
        as_good = [s.method for s in close if s is not pick]
        per_domain.append(f"{d.name}: `{pick.method}` ({fmt_metric(d.metric, pick.values['test_metric'])}, "
                          f"{pick.mean('trainable_percent'):.3f}% trainable, {pick.mean('train_seconds') or 0:.1f} s"
                          f"{'; as good: ' + _names(as_good) if as_good else ''})")
    if not per_domain:
        return ["No domain has results yet."]
    top, count = picks.most_common(1)[0]
    on_front = ", ".join(f"`{m}` {n}" for m, n in fronts.most_common())
    return [(f"Best balance per domain (among the methods as good as the best, i.e. tied with it inside the seeds' "
             f"spread or within 1 point (1% for other metrics), the one training the fewest parameters, then the "
             f"lowest peak memory): {'; '.join(per_domain)}."),
            (f"`{top}` is the best balance in {count} of {len(per_domain)} domains. On the joint Pareto front of "
             f"score, trained parameters, peak memory and training time (domains where the method is on it): "
             f"{on_front}.")]
