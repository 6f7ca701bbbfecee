"""`peftlab report DIR`: the study's Markdown and self-contained HTML report, rebuilt from stored results only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftlab.study import analysis, plots
from peftlab.study.analysis import Summary
from peftlab.study.budget import Budget, parse_budgets
from peftlab.study.document import Block, Bullets, Heading, Image, Paragraph, Table, to_html, to_markdown
from peftlab.study.errors import StudyError
from peftlab.study.results import load_records, load_study


def fmt_count(n: float | None) -> str:
    if n is None:
        return "–"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.0f}"


def fmt_metric(metric: str, pair: tuple[float, float] | None, signed: bool = False) -> str:
    if pair is None:
        return "–"
    scale, digits = (100.0, 1) if metric in analysis.PERCENT_METRICS else (1.0, 3)
    mean, std = pair[0] * scale, pair[1] * scale
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} ± {std:.{digits}f}" if std else f"{mean:{sign}.{digits}f}"


def fmt_num(pair: tuple[float, float] | None, scale: float = 1.0, digits: int = 0) -> str:
    return "–" if pair is None else f"{pair[0] * scale:.{digits}f}"


def attach_kind(method_id: str) -> str:
    """The method card's attach kind, or a note when the id is not registered in this installation."""
    import peftlab

    try:
        return peftlab.get_method(method_id).card.kind.value
    except peftlab.PeftlabError:
        return "not registered"


def results_table(rows: Sequence[Summary], metric: str) -> Table:
    """The survey's table with measured columns."""
    unit = " (%)" if metric in analysis.PERCENT_METRICS else ""
    header = ["method", "attach kind", "trainable params", "% trainable", f"test {metric}{unit}", "Δ vs full",
              "peak memory (MB)", "train time (s)", "median step (ms)", "examples/s", "adapter size",
              "latency (ms)", "latency merged (ms)", "FFN activation density (%)", "runs ok / failed"]
    body = []
    for s in rows:
        delta = s.values.get("delta_vs_full")
        body.append([s.method, attach_kind(s.method_id), fmt_count(s.mean("trainable_params")),
                     fmt_num(s.values.get("trainable_percent"), digits=3),
                     fmt_metric(metric, s.values.get("test_metric")),
                     fmt_metric(metric, delta, signed=True) if s.method_id != "full" or s.ok == 0 else "0",
                     fmt_num(s.values.get("peak_memory_mb")), fmt_num(s.values.get("train_seconds"), digits=1),
                     fmt_num(s.values.get("median_step_seconds"), 1e3),
                     fmt_num(s.values.get("examples_per_second"), digits=1),
                     fmt_count(s.mean("adapter_bytes")) + "B" if s.mean("adapter_bytes") else "–",
                     fmt_num(s.latency.get("unmerged"), digits=1),
                     fmt_num(s.latency.get("merged"), digits=1) if s.mergeable else "n/a",
                     fmt_num(s.values.get("activation_density"), 100, digits=1),
                     f"{s.ok} / {s.failed}"])
    return Table(header, body)


def which_method(rows: Sequence[Summary], metric: str, higher: bool, budgets: Sequence[Budget]) -> list[Block]:
    """The "which method" section, from measured means only."""
    blocks: list[Block] = [Heading("Which method gives the best balance?")]
    pick, tol = analysis.best_balance(rows, metric, higher)
    if pick is None:
        return blocks + [Paragraph("No run finished, so there is nothing to compare yet.")]
    shown_tol = f"{tol * 100:.1f} points" if metric in analysis.PERCENT_METRICS else f"{tol:.3g}"
    blocks.append(Paragraph(
        f"**Best balance: `{pick.method}`** — test {metric} {fmt_metric(metric, pick.values['test_metric'])} with "
        f"{fmt_count(pick.mean('trainable_params'))} trainable parameters "
        f"({pick.mean('trainable_percent'):.3f}%). Rule: among the methods within {shown_tol} of the best test "
        f"{metric}, the one training the fewest parameters (ties: lower peak memory)."))
    items = []
    for field, name in analysis.RESOURCES.items():
        front = analysis.pareto(rows, [field], higher)
        items.append(f"{metric} vs {name}: " + ", ".join(f"`{s.method}`" for s in front))
    joint = analysis.pareto(rows, list(analysis.RESOURCES), higher)
    items.append("on all four at once: " + ", ".join(f"`{s.method}`" for s in joint))
    blocks += [Paragraph("Pareto-optimal methods (no other method is at least as good on both axes and better on "
                         "one):"), Bullets(items)]
    if budgets:
        limits = ", ".join(b.describe() for b in budgets)
        best = analysis.best_under(rows, budgets, higher)
        if best is None:
            blocks.append(Paragraph(f"**Under your budget ({limits}) no method fits.** Relax the budget or look at "
                                    "the Pareto lists above."))
        else:
            blocks.append(Paragraph(f"**Best under your budget ({limits}): `{best.method}`** with test {metric} "
                                    f"{fmt_metric(metric, best.values['test_metric'])}."))
    return blocks


def figures(rows: Sequence[Summary], all_rows: Sequence[Summary], metric: str, folder: Path) -> list[Block]:
    """Plot files of the report (written to `folder`) as image blocks."""
    specs = [
        (plots.metric_vs(rows, "trainable_params", "trainable parameters", metric, folder / "metric_vs_params.png",
                         log_x=True), f"test {metric} vs trainable parameters (log scale)"),
        (plots.metric_vs(rows, "peak_memory_mb", "peak memory (MB)", metric, folder / "metric_vs_memory.png"),
         f"test {metric} vs peak memory"),
        (plots.metric_vs(rows, "train_seconds", "training time (s)", metric, folder / "metric_vs_time.png"),
         f"test {metric} vs training time"),
        (plots.learning_curves(rows, _curve_metric(rows, metric), folder / "learning_curves.png"),
         "validation learning curves (mean over seeds)"),
        (plots.data_size(all_rows, metric, folder / "metric_vs_data_size.png"), f"test {metric} vs training examples"),
    ]
    return [Heading("Figures")] + [Image(path, caption) for path, caption in specs if path is not None]


def _curve_metric(rows: Sequence[Summary], default: str) -> str:
    return next((s.curve_metric for s in rows if s.curve_metric), default)


def build_report(out: Path, budget: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write report.md, report.html and plots/*.png in `out` from study.json and results.jsonl."""
    study = load_study(out)
    records = load_records(out)
    if study is not None:
        ids = set(study.to_dict()["run_ids"])
        records = [r for r in records if r["run_id"] in ids]
    if not records:
        raise StudyError(f"no results in {out}; run `peftlab compare --out {out}` first")
    records = [dict(r, delta_vs_full=analysis.delta_vs_full(r, records)) for r in records]
    budgets = parse_budgets(budget if budget is not None else (study.budget if study else ()))
    order = [m.label for m in study.methods] if study else []
    summaries = analysis.summarise(records, order)
    info = next((r for r in records if r.get("status") == "ok"), records[0])
    metric, higher = info.get("metric", "accuracy"), info.get("higher_is_better", True)
    main_size = analysis.largest_size(summaries)
    main_rows = [s for s in summaries if s.train_size == main_size]
    blocks = _header(info, records, study) + _pending(study, records) + size_tables(summaries, metric)
    blocks += which_method(main_rows, metric, higher, budgets)
    blocks += figures(main_rows, summaries, metric, out / "plots")
    blocks += _failures(records)
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(blocks, out), encoding="utf-8")
    page.write_text(to_html(blocks, f"peftlab study: {info['task']}"), encoding="utf-8")
    return md, page


def _header(info: dict[str, Any], records: list[dict[str, Any]], study: Any) -> list[Block]:
    ok = sum(r.get("status") == "ok" for r in records)
    hardware = info.get("hardware") or {}
    versions = info.get("versions") or {}
    seeds = sorted({r["seed"] for r in records})
    input_size = (info.get("task_info") or {}).get("input_size") or f"max length {info.get('max_length')}"
    text = (f"Task `{info['task']}` on model `{info.get('model')}`; {info.get('steps')} steps of batch "
            f"{info.get('batch_size')} ({input_size}) for every method; seeds {seeds}; "
            f"{ok} of {len(records)} runs succeeded. Hardware: {hardware.get('cpu', '?')}, "
            f"{hardware.get('cpu_count', '?')} cores, device {hardware.get('device', '?')}. "
            f"Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    note = ("Memory is the process's peak resident memory (each run in its own process) on CPU, "
            "or peak allocated memory on CUDA. Values are mean ± std over seeds; Δ vs full is the difference "
            "to full fine-tuning with the same seed and data.")
    return [Heading(f"peftlab study: {info['task']}", 1), Paragraph(text), Paragraph(note)]


def _pending(study: Any, records: list[dict[str, Any]]) -> list[Block]:
    """A warning when planned runs have no record yet (an interrupted study): the tables and the recommendation
    cover the finished runs only."""
    if study is None:
        return []
    done = {r["run_id"] for r in records}
    missing = [run.run_id for run in study.runs() if run.run_id not in done]
    if not missing:
        return []
    shown = ", ".join(f"`{m}`" for m in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return [Paragraph(f"**Incomplete study: {len(done)} of {len(done) + len(missing)} planned runs have "
                      f"finished.** The tables and the recommendation below cover those runs only. Not run yet: "
                      f"{shown}. Run the same `peftlab compare` command again to finish the study.")]


def size_tables(summaries: Sequence[Summary], metric: str) -> list[Block]:
    blocks: list[Block] = []
    sizes = sorted({s.train_size for s in summaries}, key=analysis._size_key)
    for size in sizes:
        rows = [s for s in summaries if s.train_size == size]
        examples = rows[0].mean("train_examples") if rows else None
        label = "all" if size is None else str(size)
        extra = f" ({examples:.0f} examples)" if examples else ""
        blocks += [Heading(f"Results, train size {label}{extra}"), results_table(rows, metric)]
    return blocks


def _failures(records: list[dict[str, Any]]) -> list[Block]:
    failed = [r for r in records if r.get("status") != "ok"]
    if not failed:
        return []
    return [Heading("Failed runs"),
            Bullets([f"`{r['run_id']}` ({r.get('failed_phase')}): {r.get('error')}" for r in failed])]
