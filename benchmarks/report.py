"""Turn the workers' raw results into Markdown: the machine, the command, and one set of tables per model."""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
from collections.abc import Sequence

from benchmarks.configs import INFERENCE, title
from benchmarks.jobs import ALLOCATORS, LIBRARY_NAMES, Job, Settings, libraries_for
from benchmarks.models import get_preset
from benchmarks.stats import (
    Groups,
    Result,
    Results,
    median,
    median_estimate,
    paired_ratios,
    peak_ratio,
    ratio_cell,
    versus_estimate,
)
from benchmarks.targets import target_rows


def pool(runs: Sequence[tuple[Job, Result]]) -> Results:
    """Pool the rounds of each (model, config, library): timings concatenate (each round's are also kept apart,
    under "rounds", for the intervals), RSS takes the median, the first failure's note is kept (a configuration
    counts as measured when any round succeeded)."""
    grouped: dict[tuple[str, str, str], list[Result]] = {}
    for job, result in runs:
        grouped.setdefault(job.key, []).append(result)
    pooled: Results = {}
    for key, results in grouped.items():
        ok = [r for r in results if r["status"] == "ok"]
        if not ok:
            pooled[key] = results[0]
            continue
        times: dict[str, list[float]] = {}
        for r in ok:
            for name, values in r["times"].items():
                times.setdefault(name, []).extend(values)
        pooled[key] = {"status": "ok", "times": times, "rounds": [r["times"] for r in ok],
                       "trainable": ok[0]["trainable"], "total": ok[0]["total"],
                       "rss_build_mb": median(r.get("rss_build_mb", math.nan) for r in ok),
                       "rss_peak_mb": median(r["rss_peak_mb"] for r in ok),
                       "note": "; ".join(r["note"] for r in results if r["status"] != "ok")}
    return pooled


def _time(result: Result | None, name: str) -> float:
    if not result or result["status"] != "ok" or name not in result["times"]:
        return math.nan
    return median(result["times"][name])


def _median_cell(ratios: Groups) -> str:
    return ratio_cell(*median_estimate(ratios))


def _versus_cell(ours: Groups, theirs: Groups) -> str:
    """Our median paired ratio over theirs, with the interval of that quotient."""
    return ratio_cell(*versus_estimate(ours, theirs))


def _num(value: float, digits: int = 3) -> str:
    """`digits` significant figures, without exponent (at most 4 decimals); "—" for NaN."""
    if math.isnan(value):
        return "—"
    magnitude = math.floor(math.log10(abs(value))) if value else 0
    return f"{value:.{min(4, max(0, digits - 1 - magnitude))}f}"


def _mb(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.0f}"


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: list[Sequence[object]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


TRAINING_HEADER = ("configuration", "library", "trainable params", "step s", "fwd / bwd / opt s", "× floor",
                   "× HF PEFT", "RSS after build MB", "peak RSS MB", "peak × HF PEFT", "note")


def training_rows(model: str, configs: Sequence[str], results: Results) -> list[Sequence[object]]:
    """One row per (training configuration, library), with the step time and peak RSS ratios. The floor's own
    "× floor" is its A/A control: a floor step against the floor step just before it."""
    rows = []
    for config in (c for c in configs if c not in INFERENCE):
        hf = results.get((model, config, "hf"))
        for library in libraries_for(config, flip=False):
            result = results.get((model, config, library))
            if result is None:
                continue
            step, note, ok = _time(result, "step"), result.get("note", ""), result["status"] == "ok"
            if config == "floor" and ok:
                note = "; ".join(filter(None, ["A/A control: × floor is the resolution of that column", note]))
            phases = " / ".join(_num(_time(result, p)) for p in ("forward", "backward", "optimizer"))
            peak = result["rss_peak_mb"] if ok else math.nan
            versus_hf = library == "peftlab"
            ratios = paired_ratios(result)
            rows.append((title(config), LIBRARY_NAMES[library], f"{result['trainable']:,}" if ok else "—",
                         _num(step), phases if ok else "—", _median_cell(ratios),
                         _versus_cell(ratios, paired_ratios(hf)) if versus_hf else "",
                         _mb(result.get("rss_build_mb", math.nan)), _mb(peak),
                         ratio_cell(peak_ratio(result, hf)) if versus_hf else "", note))
    return rows


def inference_rows(model: str, results: Results) -> list[Sequence[object]]:
    """Latency of the base model and of LoRA (all linear, r=8) unmerged and merged, per library."""
    base_result = results.get((model, "infer", "base"))
    base = _time(base_result, "latency")
    rows: list[Sequence[object]] = [("base model", "torch", _num(base), "1.00×", "", "")]
    control = paired_ratios(base_result, "copy_latency", "latency")
    if control:
        rows.append(("untouched copy of the base (A/A control)", "torch", _num(_time(base_result, "copy_latency")),
                     _median_cell(control), "", "resolution of × base"))
    hf_unmerged = paired_ratios(results.get((model, "infer", "hf")), "latency", "paired_base")
    for library in ("hf", "peftlab"):
        result = results.get((model, "infer", library))
        if result is None:
            continue
        for label, field, reference in (("LoRA unmerged", "latency", "paired_base"),
                                        ("LoRA merged", "merged_latency", "paired_base_merged")):
            versus_base = paired_ratios(result, field, reference)
            itself = library == "hf" and field == "latency"
            rows.append((label, LIBRARY_NAMES[library], _num(_time(result, field)), _median_cell(versus_base),
                         "1.00×" if itself else _versus_cell(versus_base, hf_unmerged), result.get("note", "")))
    return rows


def switching_rows(model: str, results: Results) -> list[Sequence[object]]:
    """Adapter load (onto a fresh base), load of a second adapter, and set_adapter, per library."""
    rows: list[Sequence[object]] = []
    hf = results.get((model, "switch", "hf"))
    for library in ("hf", "peftlab"):
        result = results.get((model, "switch", library))
        if result is None:
            continue
        load = _time(result, "load")
        rows.append((LIBRARY_NAMES[library], _num(load), _num(_time(result, "load_second")),
                     _num(_time(result, "switch") * 1000), ratio_cell(load / _time(hf, "load"))
                     if library == "peftlab" else "", result.get("note", "")))
    return rows


def machine() -> list[str]:
    """The machine and software versions, as Markdown bullet lines (read without importing the libraries)."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = ", ".join(f"{name} {_version(name)}" for name in ("torch", "transformers", "peft", "peftlab"))
    return [f"- CPU: {cpu}, {os.cpu_count()} cores; {platform.platform()}; Python {platform.python_version()}",
            f"- {versions}"]


def allocator_line(allocator: str) -> str:
    """The report's bullet on the workers' memory allocator (see jobs.ALLOCATORS)."""
    if allocator == "system":
        inherited = os.environ.get("GLIBC_TUNABLES")
        if inherited:  # the workers inherit it: say so rather than claim the defaults
            return f"- allocator: system, with `GLIBC_TUNABLES={inherited}` from the environment"
        return "- allocator: system (the C library's defaults: glibc gives freed memory back to the OS)"
    settings = " ".join(f"{name}={value}" for name, value in ALLOCATORS[allocator].items())
    libc = platform.libc_ver()[0]
    effect = ("freed memory stays in the process, as on a GPU with PyTorch's caching allocator" if libc == "glibc"
              else f"NO EFFECT here: the C library is {libc or 'not glibc'}, which ignores it")
    return f"- allocator: {allocator} (`{settings}`): {effect}"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def render(models: Sequence[str], configs: Sequence[str], results: Results, settings: Settings, rounds: int,
           command: str, load: tuple[float, float]) -> str:
    """The whole Markdown report; `load` is the 1-minute load average at the start and at the end of the run."""
    lines = ["# Benchmarks: peftlab vs Hugging Face PEFT", "",
             f"Measured {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}.", *machine(),
             (f"- torch threads: {settings.threads}; warmup {settings.warmup}, repeats {settings.repeats} per process, "
              f"{rounds} round(s), each configuration in its own process"
              f"{'; QUICK mode (tiny shapes)' if settings.quick else ''}"),
             allocator_line(settings.allocator),
             (f"- load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f} (other work on the machine "
              "adds noise; every configuration of a model saw the same conditions, interleaved)"),
             f"- command: `{command}`", "",
             ("Times are medians over all measured steps; a step is forward + backward + AdamW step (the floor has no "
              "optimizer: forward + backward to the input embeddings only, all weights frozen). Every training step "
              "is paired with a floor step of the same weights run just before it in the same process (the method "
              "switched off): × floor is the median of these paired ratios, and × HF PEFT divides peftlab's by HF "
              "PEFT's, so load that drifts over minutes cancels out. In brackets: a 95% bootstrap interval of each "
              "ratio (resampling the worker processes, then the pairs within each), a guide to how far it may move "
              "between runs; with one round it misses what differs from process to process. The floor row's "
              "× floor pairs two floor steps the same way (an A/A control): its distance from 1.00× is what this "
              "machine resolves. RSS is the process's "
              "peak resident set (ru_maxrss), after model build + attach and at the end. How and why: "
              "benchmarks/README.md; a per-operator breakdown: `python -m benchmarks.profile_lora`."), ""]
    targets = target_rows(models, configs, results)
    if targets:
        lines += ["## Targets (issue #5), as this run reads them", "",
                  ("Each cell: the ratio, its 95% interval, and **met** / **missed** when the whole interval is on one "
                   "side of the bound; otherwise the median decides and the cell says how far the interval reaches. "
                   "The A/A rows are what two identical measurements give: a ratio that close to its bound is decided "
                   "by the run, not by the code."), ""]
        lines += _table(("target", "bound", *models), targets) + [""]
    for model in models:
        preset = get_preset(model)
        shape = "2 x 32" if settings.quick else f"{preset.batch_size} x {preset.seq_len}"
        lines += [f"## {model}: {preset.description}; batch {shape}", ""]
        lines += _table(TRAINING_HEADER, training_rows(model, configs, results)) + [""]
        if "infer" in configs:
            lines += [("Inference (eval, no grad, same batch; LoRA r=8 on all linear layers). × base: median ratio to "
                       "an untouched copy of the base model called just before, in the same process; × HF PEFT "
                       "unmerged divides that by HF PEFT's unmerged ratio. The A/A control pairs the base model with "
                       "its untouched copy the same way: its distance from 1.00× is the column's resolution:"), ""]
            lines += _table(("variant", "library", "latency s", "× base", "× HF PEFT unmerged", "note"),
                            inference_rows(model, results)) + [""]
        if "switch" in configs:
            lines += ["Adapters (LoRA r=8, all linear): load onto a fresh base, load a second, switch:", ""]
            lines += _table(("library", "load s", "load second s", "set_adapter ms", "load × HF PEFT", "note"),
                            switching_rows(model, results)) + [""]
    return "\n".join(lines)

