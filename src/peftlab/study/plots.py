"""The report's figures (matplotlib, Agg backend, PNG): metric vs resources, learning curves, data size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from peftlab.study.analysis import PERCENT_METRICS, Summary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MARKERS = "osD^vP*Xp<>h"


def styles(methods: Sequence[str]) -> dict[str, dict[str, object]]:
    """One colour (tab20) and marker per method, the same in every figure of a report."""
    plt = _pyplot()
    palette = plt.get_cmap("tab20")
    return {m: {"color": palette((2 * i) % 20 + (i // 10) % 2), "marker": MARKERS[i % len(MARKERS)]}
            for i, m in enumerate(dict.fromkeys(methods))}


def _metric_axis(ax: object, label: str, metric: str) -> None:
    """The y axis of a metric, in percent for the metrics the tables show in percent."""
    if metric in PERCENT_METRICS:
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        label += " (%)"
    ax.set_ylabel(label)


def _figure() -> tuple:
    """A new figure and axes of the report's size."""
    return _pyplot().subplots(figsize=(7, 4.5))


def metric_vs(summaries: Sequence[Summary], field: str, xlabel: str, metric: str, path: Path, *,
              log_x: bool = False) -> Path | None:
    """Scatter of mean test metric (± std over seeds) against a resource; one labelled point per method."""
    rows = [s for s in summaries if s.mean("test_metric") is not None and s.mean(field) is not None]
    if not rows:
        return None
    fig, ax = _figure()
    style = styles([s.method for s in rows])
    for s in rows:
        x, (y, dy) = s.values[field][0], s.values["test_metric"]
        ax.errorbar(x, y, yerr=dy if dy else None, linestyle="none", capsize=3, **style[s.method])
        ax.annotate(s.method, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if log_x and all(s.mean(field) > 0 for s in rows):
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, title=f"test {metric} vs {xlabel}")
    _metric_axis(ax, f"test {metric}", metric)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def learning_curves(summaries: Sequence[Summary], metric: str, path: Path) -> Path | None:
    """Validation metric against training step, one line per method (mean over seeds)."""
    rows = [s for s in summaries if s.curve]
    if not rows:
        return None
    fig, ax = _figure()
    style = styles([s.method for s in rows])
    for s in rows:
        ax.plot([p[0] for p in s.curve], [p[1] for p in s.curve], label=s.method, **style[s.method])
    ax.set(xlabel="training step", title="learning curves")
    _metric_axis(ax, f"validation {metric}", metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def data_size(summaries: Sequence[Summary], metric: str, path: Path) -> Path | None:
    """Test metric against the number of training examples, one line per method (needs several sizes)."""
    by_method: dict[str, list[Summary]] = {}
    for s in summaries:
        if s.mean("test_metric") is not None and s.mean("train_examples"):
            by_method.setdefault(s.method, []).append(s)
    if not any(len(v) > 1 for v in by_method.values()):
        return None
    fig, ax = _figure()
    style = styles(list(by_method))
    for method, rows in by_method.items():
        rows = sorted(rows, key=lambda s: s.mean("train_examples"))
        ax.errorbar([s.mean("train_examples") for s in rows], [s.mean("test_metric") for s in rows],
                    yerr=[s.values["test_metric"][1] for s in rows], capsize=3, label=method, **style[method])
    ax.set_xscale("log")
    ax.set(xlabel="training examples", title=f"test {metric} vs data size")
    _metric_axis(ax, f"test {metric}", metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
