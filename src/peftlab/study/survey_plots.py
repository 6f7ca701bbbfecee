"""The survey report's figures: score relative to full fine-tuning (method x domain heatmap, and against the share
of trained parameters), continual learning (final accuracy and forgetting) and placement (score per variant)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from peftlab.study.crossdomain import DomainResult, Pair
from peftlab.study.plots import _figure, _pyplot, _save, styles


def relative_heatmap(domains: Sequence[DomainResult], methods: Sequence[str], path: Path) -> Path | None:
    """Mean score relative to full fine-tuning, one cell per method and domain (blank: no result)."""
    cells = [[(d.relative.get(m) or (math.nan, 0.0))[0] for d in domains] for m in methods]
    if not domains or all(math.isnan(v) for row in cells for v in row):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.4 * len(domains) + 3, 0.4 * len(methods) + 1.5))
    image = ax.imshow(cells, cmap="RdYlGn", vmin=0.5, vmax=1.1, aspect="auto")
    ax.set_xticks(range(len(domains)), [d.name for d in domains])
    ax.set_yticks(range(len(methods)), list(methods))
    for i, row in enumerate(cells):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="score / full fine-tuning's")
    ax.set_title("score relative to full fine-tuning (largest train size)")
    return _save(fig, path)


def relative_vs_params(domains: Sequence[DomainResult], path: Path) -> Path | None:
    """Every method-domain pair: relative score against the % of parameters trained (log x); colour = method."""
    points = [(s.method, d.name, s.mean("trainable_percent"), d.relative[s.method]) for d in domains for s in d.main
              if d.relative.get(s.method) is not None and s.mean("trainable_percent")]
    if not points:
        return None
    fig, ax = _figure()
    style = styles([p[0] for p in points])
    markers = dict(zip(dict.fromkeys(p[1] for p in points), "osD^vP*Xp<>h"))
    seen: set[str] = set()
    for method, domain, percent, (mean, std) in points:
        ax.errorbar(percent, mean, yerr=std or None, linestyle="none", capsize=2, color=style[method]["color"],
                    marker=markers[domain], label=method if method not in seen else None)
        seen.add(method)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="% of parameters trained (log)", ylabel="score / full fine-tuning's",
           title="relative score vs trained parameters (marker = domain: " +
                 ", ".join(f"{m} {d}" for d, m in markers.items()) + ")")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[Pair | None]], ylabel: str, title: str,
                 path: Path) -> Path | None:
    """Bars of mean ± std: one group per entry of `groups`, one bar per series."""
    if not groups or not any(v for values in series.values() for v in values):
        return None
    fig, ax = _figure()
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [v[0] if v else 0 for v in values], width, yerr=[v[1] if v else 0 for v in values], capsize=2,
               label=name)
    ax.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _save(fig, path)
