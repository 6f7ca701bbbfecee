"""The survey's cross-domain report (Markdown and self-contained HTML), rebuilt from the stored results only:
domains, cross-domain tables, the survey's parameter-reduction column, RQ1-RQ3, the claims' verdicts, continual
learning, placement, and each domain's own tables."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from peftlab.study import claims, plots, questions, survey_plots
from peftlab.study.continual import STRATEGIES
from peftlab.study.crossdomain import (
    DomainResult,
    Pair,
    compare,
    load_domain,
    mean_rank,
    mean_std,
    methods_of,
    study_records,
)
from peftlab.study.document import Block, Bullets, Heading, Image, Paragraph, Table, to_html, to_markdown
from peftlab.study.errors import StudyError
from peftlab.study.report import fmt_metric, size_tables
from peftlab.study.survey import load_manifest


def load_domains(out: Path, manifest: dict[str, Any], key: str) -> list[DomainResult]:
    """The domains' results of one mode ("methods" or "placement") that have records."""
    found = []
    for entry in manifest["domains"]:
        if key in entry:
            result = load_domain(out / entry[key], entry["name"], entry["area"], entry["description"])
            if result is not None:
                found.append(result)
    return found


def total_seconds(manifest: dict[str, Any]) -> float:
    """Wall time of every session of the survey (a resumed survey has several)."""
    total = 0.0
    for session in manifest.get("sessions", []):
        if session.get("finished"):
            total += (datetime.fromisoformat(session["finished"]) - datetime.fromisoformat(session["started"])
                      ).total_seconds()
    return total


def build_blocks(out: Path, plot_dir: Path, intro: list[Block] | None = None,
                 title: str = "peftlab survey") -> tuple[list[Block], str]:
    """The report's blocks (plots written to `plot_dir`) and its title."""
    manifest = load_manifest(out)
    domains = load_domains(out, manifest, "methods")
    if not domains and not manifest.get("continual"):
        raise StudyError(f"no results in {out} yet; run `peftlab survey --out {out}` first")
    title = f"{title} ({manifest.get('profile', 'full')} profile)"
    blocks: list[Block] = [Heading(title, 1), *(intro or []), *_header(manifest, domains)]
    blocks += _domains_table(domains, manifest)
    if domains:
        blocks += _cross_domain(domains, plot_dir)
        blocks += _reduction(domains)
        blocks += [Heading("RQ1: parameter efficiency and performance across tasks"), *map(Paragraph,
                   questions.rq1(domains)),
                   Heading("RQ2: trade-offs and limits per domain"), Bullets(questions.rq2(domains)),
                   Heading("RQ3: the best balance of accuracy, training speed and resource use"),
                   *map(Paragraph, questions.rq3(domains))]
        blocks += _claims(domains)
    if manifest.get("continual"):
        blocks += _continual(out / manifest["continual"], plot_dir)
    placement = load_domains(out, manifest, "placement")
    if placement:
        blocks += _placement(placement, plot_dir)
    for d in domains:
        blocks += [Heading(f"Domain: {d.name}"), Paragraph(f"{d.description}; metric: {d.metric}.")]
        blocks += [Heading(b.text, 3) if isinstance(b, Heading) else b for b in size_tables(d.summaries, d.metric)]
        figure = plots.metric_vs(d.main, "trainable_params", "trainable parameters", d.metric,
                                 plot_dir / f"{d.name}_metric_vs_params.png", log_x=True)
        if figure is not None:
            blocks.append(Image(figure, f"{d.name}: test {d.metric} vs trainable parameters"))
    blocks += _failures(out, manifest)
    return blocks, title


def build_survey_report(out: Path) -> tuple[Path, Path]:
    """Write OUT/report.md, OUT/report.html and OUT/plots/*.png."""
    blocks, title = build_blocks(out, out / "plots")
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(blocks, out), encoding="utf-8")
    page.write_text(to_html(blocks, title), encoding="utf-8")
    return md, page


def _header(manifest: dict[str, Any], domains: list[DomainResult]) -> list[Block]:
    records = [r for d in domains for r in d.records]
    info = next((r for r in records if r.get("status") == "ok"), {})
    hardware, versions = info.get("hardware") or {}, info.get("versions") or {}
    sessions = manifest.get("sessions", [])
    seconds = total_seconds(manifest)
    return [Paragraph(
        f"Command: `{manifest.get('command')}`. Commit: `{manifest.get('commit') or 'unknown'}`. "
        f"Started {sessions[0]['started'] if sessions else '?'}, {len(sessions)} session(s), total wall time "
        f"{seconds / 3600:.2f} h ({seconds:.0f} s). Hardware: {hardware.get('cpu', '?')}, "
        f"{hardware.get('cpu_count', '?')} cores, {hardware.get('ram_gb', '?')} GB, device "
        f"{hardware.get('device', '?')}. Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."),
        Paragraph(f"Methods: {', '.join(f'`{m}`' for m in manifest.get('methods', []))}; seeds "
                  f"{manifest.get('seeds')}. Values are mean ± std over seeds. A difference inside the seeds' spread "
                  "(|mean a − mean b| ≤ std a + std b) is called a tie. Scores relative to full fine-tuning are "
                  "per seed (method / full, or full / method for perplexity), so above 1 is better than full.")]


def _domains_table(domains: list[DomainResult], manifest: dict[str, Any]) -> list[Block]:
    rows = []
    for d in domains:
        ok = sum(r.get("status") == "ok" for r in d.records)
        info = next((r for r in d.records if r.get("status") == "ok"), d.records[0])
        sizes = ", ".join("all" if s is None else str(s) for s in d.sizes)
        rows.append([d.name, d.area, d.description, str(info.get("model")), d.metric, sizes,
                     str(info.get("steps")), f"{ok} / {len(d.records) - ok}"])
    blocks: list[Block] = [Heading("Domains"), Table(["domain", "area", "task", "model", "metric", "train sizes",
                                                      "steps", "runs ok / failed"], rows)]
    missing = [f"**{u['name']}** ({u['area']}: {u['description']}): not measured here, because {u['reason']}."
               for u in manifest.get("unmeasured", [])]
    return blocks + [Paragraph("Not measured here:"), Bullets(missing)] if missing else blocks


def _cross_domain(domains: list[DomainResult], plot_dir: Path) -> list[Block]:
    methods = methods_of(domains)
    names = [d.name for d in domains]
    ranks = mean_rank(domains)

    def table(cell: Any, extra: list[str] | None = None) -> Table:
        return Table(["method", *names, *(["mean rank"] if extra else [])],
                     [[m, *[cell(d, m) for d in domains], *([extra[i]] if extra else [])]
                      for i, m in enumerate(methods)])

    def relative(d: DomainResult, m: str) -> str:
        pair = d.relative.get(m)
        return "–" if pair is None else f"{pair[0]:.3f} ± {pair[1]:.3f} (#{d.rank.get(m, '–')})"

    def field(name: str, digits: int) -> Any:
        def cell(d: DomainResult, m: str) -> str:
            s = d.summary(m)
            value = s.mean(name) if s is not None else None
            return "–" if value is None else f"{value:.{digits}f}"
        return cell

    blocks: list[Block] = [
        Heading("Across domains"),
        Paragraph("Score relative to full fine-tuning (mean ± std over seeds; #rank by mean test score in the "
                  "domain), at each domain's largest train size:"),
        table(relative, [f"{ranks[m]:.1f}" if m in ranks else "–" for m in methods]),
        Paragraph("Trainable parameters, % of the base model:"), table(field("trainable_percent", 3)),
        Paragraph("Peak memory (MB; process peak RSS on CPU):"), table(field("peak_memory_mb", 0)),
        Paragraph("Training time (s, evaluation excluded):"), table(field("train_seconds", 1))]
    for figure, caption in (
            (survey_plots.relative_heatmap(domains, methods, plot_dir / "relative_heatmap.png"),
             "score relative to full fine-tuning, method x domain"),
            (survey_plots.relative_vs_params(domains, plot_dir / "relative_vs_params.png"),
             "relative score vs share of trained parameters, every method and domain")):
        if figure is not None:
            blocks.append(Image(figure, caption))
    return blocks


def _reduction(domains: list[DomainResult]) -> list[Block]:
    rows = []
    for method in methods_of(domains):
        measured = [(d.name, 100 - s.mean("trainable_percent")) for d in domains
                    if (s := d.summary(method)) is not None and s.mean("trainable_percent") is not None]
        values = [v for _, v in measured]
        span = f"{min(values):.2f}-{max(values):.2f}%" if values else "–"
        rows.append([method, claims.SURVEY_REDUCTION.get(method, "–"), span,
                     "; ".join(f"{n} {v:.2f}%" for n, v in measured) or "–"])
    return [Heading("Parameter reduction: the survey's figures next to the measured ones"),
            Paragraph("Reduction = 100% − trainable parameters as a % of the base model (the new classification "
                      "head counts as trained)."),
            Table(["method", "survey", "measured (range over domains)", "measured per domain"], rows)]


def _claims(domains: list[DomainResult]) -> list[Block]:
    verdicts = claims.check_claims(domains)
    return [Heading("The survey's claims"),
            Table(["claim", "verdict", "numbers"], [[v.claim, f"**{v.verdict}**", v.evidence] for v in verdicts])]


def _continual(folder: Path, plot_dir: Path) -> list[Block]:
    study, records = study_records(folder)
    good = [r for r in records if r.get("status") == "ok" and r.get("continual")]
    blocks: list[Block] = [Heading("Continual learning")]
    if study is None or not good:
        return blocks + [Paragraph("No continual-learning run has finished yet.")]
    tasks = good[0]["continual"]["tasks"]
    blocks.append(Paragraph(
        f"Tasks in order: {' → '.join(tasks)} (one base model, each task its own slice of the output head); "
        f"{study.settings.steps} steps per task, {study.train_size} training examples per task. per-task: a new "
        "adapter for each task, the task's own adapter at test time; shared: one adapter trained on each task in "
        "turn. Forgetting: mean over earlier tasks of (best accuracy after any earlier stage − final accuracy)."))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in good:
        groups[(r["method"], r["continual"]["strategy"])].append(r)
    stats: dict[tuple[str, str], tuple[Pair, Pair | None]] = {}
    rows = []
    for (method, strategy), runs in groups.items():
        final = mean_std([r["continual"]["final_accuracy"] for r in runs])
        forget = mean_std([r["continual"]["forgetting"] for r in runs if r["continual"]["forgetting"] is not None])
        stats[(method, strategy)] = (final, forget)
        per_task = [mean_std([r["continual"]["accuracy_matrix"][-1][j] for r in runs]) for j in range(len(tasks))]
        rows.append([method, strategy, fmt_metric("accuracy", final), fmt_metric("accuracy", forget),
                     *[fmt_metric("accuracy", p) for p in per_task],
                     f"{sum(r['trainable_params'] for r in runs) / len(runs):.0f}", str(len(runs))])
    blocks.append(Table(["method", "strategy", "final accuracy (%)", "forgetting (points)",
                         *[f"final {t} (%)" for t in tasks], "trained params", "seeds"], rows))
    blocks.append(Bullets(_continual_sentences(stats)))
    methods = list(dict.fromkeys(m for m, _ in groups))
    figure = survey_plots.grouped_bars(
        methods, {f"{s}: final accuracy": [stats.get((m, s), (None, None))[0] for m in methods] for s in STRATEGIES}
        | {f"{s}: forgetting": [stats.get((m, s), (None, None))[1] for m in methods] for s in STRATEGIES},
        "accuracy / forgetting (fraction)", "continual learning", plot_dir / "continual.png")
    return blocks + ([Image(figure, "final accuracy and forgetting per method and strategy")] if figure else [])


def _continual_sentences(stats: dict[tuple[str, str], tuple[Pair, Pair | None]]) -> list[str]:
    out = []
    for strategy in STRATEGIES:
        rows = {m: v for (m, s), v in stats.items() if s == strategy}
        if not rows:
            continue
        best = max(rows, key=lambda m: rows[m][0][0])
        tied = [m for m in rows if m != best and compare(rows[m][0], rows[best][0], True) == "tie"]
        text = (f"{strategy}: the highest final accuracy is `{best}`'s ({fmt_metric('accuracy', rows[best][0])}%)"
                + (f", tied with {', '.join(f'`{m}`' for m in tied)}" if tied else ""))
        forgetting = {m: v[1] for m, v in rows.items() if v[1] is not None}
        if forgetting:
            least = min(forgetting, key=lambda m: forgetting[m][0])
            text += f"; the least forgetting is `{least}`'s ({fmt_metric('accuracy', forgetting[least])} points)"
        out.append(text + ".")
    for strategy in STRATEGIES:
        prompt, lora = stats.get(("prompt", strategy)), stats.get(("lora", strategy))
        if prompt and lora:
            verdict = compare(prompt[0], lora[0], True)
            out.append(f"Prompt tuning against LoRA ({strategy}): final accuracy "
                       f"{fmt_metric('accuracy', prompt[0])}% vs {fmt_metric('accuracy', lora[0])}% — prompt tuning "
                       f"is {'tied with' if verdict == 'tie' else verdict + ' than'} LoRA.")
    return out


def _placement(domains: list[DomainResult], plot_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading("Placement: the same parameter budget in different places"), Paragraph(
        "LoRA with one budget (rank 8 on every attention and feed-forward layer) spent on the attention "
        "projections only, the feed-forward layers only, both, the early half or the late half of the blocks; the "
        "rank of each variant is the budget divided by its per-rank cost (the trained parameters below include the "
        "new head). A CNN has no attention: only both / early / late.")]
    for d in domains:
        rows, pairs = [], {}
        for s in d.main:
            variant = s.method.split("@", 1)[-1]
            rank = next((r["config"]["method"].get("r") for r in d.records
                         if r.get("method") == s.method and r.get("status") == "ok"), None)
            pairs[variant] = s.values.get("test_metric")
            rows.append([variant, str(rank), f"{s.mean('trainable_params') or 0:.0f}",
                         fmt_metric(d.metric, s.values.get("test_metric")), f"{s.ok} / {s.failed}"])
        blocks += [Heading(f"Placement on {d.name}", 3),
                   Table(["variant", "rank", "trained params", f"test {d.metric}", "runs ok / failed"], rows)]
        sentences = []
        for a, b in (("attention", "feed-forward"), ("early", "late")):
            if pairs.get(a) and pairs.get(b):
                verdict = compare(pairs[a], pairs[b], d.higher_is_better)
                sentences.append(f"{a} vs {b}: {fmt_metric(d.metric, pairs[a])} vs {fmt_metric(d.metric, pairs[b])}"
                                 f" — {a} is {'tied with' if verdict == 'tie' else verdict + ' than'} {b}.")
        if sentences:
            blocks.append(Bullets(sentences))
    variants = list(dict.fromkeys(s.method.split("@", 1)[-1] for d in domains for s in d.main))
    figure = survey_plots.grouped_bars(
        [d.name for d in domains],
        {v: [next((s.values.get("test_metric") for s in d.main if s.method.endswith("@" + v)), None)
             for d in domains] for v in variants},
        "test score (fraction, or the domain's metric)", "placement: score per variant", plot_dir / "placement.png")
    return blocks + ([Image(figure, "placement variants per domain")] if figure else [])


def _failures(out: Path, manifest: dict[str, Any]) -> list[Block]:
    folders = [out / e[k] for e in manifest["domains"] for k in ("methods", "placement") if k in e]
    if manifest.get("continual"):
        folders.append(out / manifest["continual"])
    failed = [r for f in folders for r in study_records(f)[1] if r.get("status") != "ok"]
    if not failed:
        return []
    by_reason: dict[str, list[str]] = defaultdict(list)
    for r in failed:
        by_reason[f"{r.get('method')} ({r.get('failed_phase')}): {str(r.get('error'))[:200]}"].append(r["task"])
    return [Heading("Failed runs"), Paragraph(f"{len(failed)} run(s) failed; each is recorded with its reason."),
            Bullets([f"{reason} — {len(tasks)} run(s) on {', '.join(sorted(set(tasks)))}"
                     for reason, tasks in by_reason.items()])]
