"""The survey's claims checked against the measured numbers, and its parameter-reduction column.

Each check returns a verdict ("confirmed", "not confirmed" or "not measurable here") and the numbers behind it.
Means are over seeds at each domain's largest train size; a difference inside the seeds' spread is a tie
(crossdomain.tie), and a tie does not confirm a claim that one method beats another.
"""

from __future__ import annotations

import dataclasses
import statistics

from peftlab.study import analysis
from peftlab.study.crossdomain import DomainResult, Pair, compare, metric_pair, tie
from peftlab.study.report import fmt_metric

CONFIRMED, NOT_CONFIRMED, NOT_MEASURABLE = "confirmed", "not confirmed", "not measurable here"

# The survey's table: parameter reduction against full fine-tuning, per method (study names).
SURVEY_REDUCTION = {"adapter-tiny": "85%", "adapter-small": "75%", "lora": "90%", "loreft": "70-90%",
                    "prefix": "65%", "sparse-40": "60%", "sparse-80": "80%", "bitfit": "95%"}
ADAPTERS = ("adapter-tiny", "adapter-small")
MARKED_DROP = 0.02  # "markedly": more than 2 points of a percent metric, or 2% of the value of another metric


@dataclasses.dataclass
class Verdict:
    claim: str
    verdict: str
    evidence: str


def _show(domain: DomainResult, pair: Pair | None) -> str:
    return fmt_metric(domain.metric, pair)


def lora_efficient(domains: list[DomainResult]) -> Verdict:
    claim = "LoRA is parameter-efficient with strong gains"
    rows = [(d, d.summary("lora"), d.relative.get("lora")) for d in domains]
    rows = [(d, s, rel) for d, s, rel in rows if s is not None and s.mean("trainable_percent") is not None
            and rel is not None]
    if not rows:
        return Verdict(claim, NOT_MEASURABLE, "no domain has both a LoRA and a full fine-tuning result")
    efficient = all(100 - s.mean("trainable_percent") >= 90 for _, s, _ in rows)
    strong = [d.name for d, _, rel in rows if rel[0] >= 0.95 or tie(rel, (1.0, 0.0))]
    ok = efficient and len(strong) * 2 >= len(rows)
    parts = [f"{d.name}: {s.mean('trainable_percent'):.2f}% trainable, {rel[0]:.3f} ± {rel[1]:.3f} of full"
             for d, s, rel in rows]
    return Verdict(claim, CONFIRMED if ok else NOT_CONFIRMED,
                   f"read as: at least 90% fewer trainable parameters than full fine-tuning on every domain (the "
                   f"survey's figure) and at least 0.95 of its score, or tied with it, on at least half of them. "
                   f"Measured: {'; '.join(parts)}. Strong on {len(strong)} of {len(rows)} domains"
                   f"{' (' + ', '.join(strong) + ')' if strong else ''}.")


def loreft_commonsense(domains: list[DomainResult]) -> Verdict:
    claim = "LoReFT can beat other methods with very few parameters on commonsense reasoning"
    ranks = [f"{d.name} rank {d.rank['loreft']} of {len(d.rank)}" for d in domains if "loreft" in d.rank]
    return Verdict(claim, NOT_MEASURABLE,
                   "no commonsense-reasoning data set (BoolQ, PIQA, HellaSwag, ...) installs from the package "
                   "registries, so no domain here measures it" + (f"; LoReFT elsewhere: {', '.join(ranks)}."
                                                                 if ranks else "."))


def arithmetic_lora_adapters(domains: list[DomainResult]) -> Verdict:
    claim = "On arithmetic reasoning, LoRA and adapters often beat LoReFT"
    domain = next((d for d in domains if d.name == "arithmetic"), None)
    if domain is None:
        return Verdict(claim, NOT_MEASURABLE, "the arithmetic domain was not run")
    loreft = metric_pair(domain, "loreft")
    adapters = [(a, metric_pair(domain, a)) for a in ADAPTERS if metric_pair(domain, a) is not None]
    lora = metric_pair(domain, "lora")
    missing = [name for name, value in (("LoRA", lora), ("adapter", adapters), ("LoReFT", loreft)) if not value]
    if missing:
        return Verdict(claim, NOT_MEASURABLE, f"the arithmetic domain has no successful {' or '.join(missing)} run")
    best_name, best = max(adapters, key=lambda a: a[1][0] if domain.higher_is_better else -a[1][0])
    higher = domain.higher_is_better
    lora_vs, adapter_vs = compare(lora, loreft, higher), compare(best, loreft, higher)
    ok = lora_vs == "better" and adapter_vs == "better"
    return Verdict(claim, CONFIRMED if ok else NOT_CONFIRMED,
                   f"exact match on addition: LoRA {_show(domain, lora)} ({lora_vs} than LoReFT), {best_name} "
                   f"{_show(domain, best)} ({adapter_vs}), LoReFT {_show(domain, loreft)}.")


def sparse_80_drops(domains: list[DomainResult]) -> Verdict:
    claim = "Sparse fine-tuning at 80% pruning drops accuracy markedly"
    parts, drops, counted = [], 0, 0
    for d in domains:
        s80 = metric_pair(d, "sparse-80")
        reference_name = "sparse-40" if metric_pair(d, "sparse-40") is not None else "full"
        reference = metric_pair(d, reference_name)
        if s80 is None or reference is None:
            continue
        counted += 1
        gap = (reference[0] - s80[0]) if d.higher_is_better else (s80[0] - reference[0])
        margin = MARKED_DROP if d.metric in analysis.PERCENT_METRICS else MARKED_DROP * abs(reference[0])
        marked = gap > margin and not tie(s80, reference)
        drops += marked
        parts.append(f"{d.name}: {_show(d, s80)} vs {reference_name} {_show(d, reference)}"
                     f"{' (marked drop)' if marked else ''}")
    return _by_majority(claim, drops, counted, parts, "Marked drop",
                        "sparse-80 below sparse-40 (or full fine-tuning) by more than 2 points and outside the seeds' "
                        "spread on most domains", "no domain has results for sparse-80 and a reference")


def bitfit_high_data(domains: list[DomainResult]) -> Verdict:
    claim = "BitFit gains little in the high-data regime"
    parts, little, counted = [], 0, 0
    for d in domains:
        sizes = d.sizes
        if len(sizes) < 2:
            continue
        gains = {}
        for method in {s.method for s in d.summaries}:
            low, high = metric_pair(d, method, sizes[0]), metric_pair(d, method, sizes[-1])
            if low is not None and high is not None:
                sign = 1 if d.higher_is_better else -1
                gains[method] = (sign * (high[0] - low[0]), (low[1] ** 2 + high[1] ** 2) ** 0.5)
        if "bitfit" not in gains or len(gains) < 3:
            continue
        counted += 1
        others = statistics.median(g[0] for m, g in gains.items() if m != "bitfit")
        gain, spread = gains["bitfit"]
        is_little = gain + spread < others
        little += is_little
        scale = 100 if d.metric in analysis.PERCENT_METRICS else 1
        parts.append(f"{d.name} ({sizes[0]} -> {sizes[-1]} examples): BitFit {gain * scale:+.3g} ± "
                     f"{spread * scale:.2g}, median of the others {others * scale:+.3g}")
    return _by_majority(claim, little, counted, parts, "Little gain",
                        "from the smaller to the larger train size BitFit's gain stays below the median gain of the "
                        "other methods by more than its spread, on most domains (the largest sizes here are modest; "
                        "the survey's high-data regime may be larger)", "no domain has BitFit at two train sizes")


def _by_majority(claim: str, hits: int, counted: int, parts: list[str], label: str, reading: str,
                 nothing: str) -> Verdict:
    """Confirmed when the claim holds on more than half of the domains that measure it."""
    if not counted:
        return Verdict(claim, NOT_MEASURABLE, nothing)
    return Verdict(claim, CONFIRMED if hits * 2 > counted else NOT_CONFIRMED,
                   f"read as: {reading}. {'; '.join(parts)}. {label} on {hits} of {counted}.")


def check_claims(domains: list[DomainResult]) -> list[Verdict]:
    return [check(domains) for check in (lora_efficient, loreft_commonsense, arithmetic_lora_adapters,
                                         sparse_80_drops, bitfit_high_data)]
