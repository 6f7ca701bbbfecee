"""`peftlab survey`: the comparative study on every domain, plus the seed papers' experiments (continual learning,
placement), as a set of ordinary study folders run through one runner and one executor.

    OUT/survey.json               the plan: command, profile, commit, domains, folders, sessions (start, end)
    OUT/methods/<domain>/         a compare study per domain (every survey method x train sizes x seeds)
    OUT/placement/<domain>/       LoRA with one parameter budget on attention / feed-forward / both / early / late
    OUT/continual/                a task sequence with one adapter per task or one shared, per method and seed
    OUT/report.md, report.html    the cross-domain report (survey_report.py)
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftlab.io.atomic import write_text_atomic
from peftlab.study.continual import STRATEGIES, ContinualStudy
from peftlab.study.domains import DOMAINS, Budget, Domain
from peftlab.study.errors import StudyError
from peftlab.study.methods import StudyMethod
from peftlab.study.placement import PLACEMENT_METHOD, placement_methods
from peftlab.study.plan import RunSettings, StudyConfig
from peftlab.study.tasks import build_task
from peftlab.study.tasks.base import TaskSpec

SURVEY_FILE = "survey.json"
MODES = ("methods", "continual", "placement")
# --quick: full fine-tuning (the reference), LoRA, LoReFT and BitFit (the full survey runs every method), and a
# shorter continual sequence with the two methods Wistuba et al. compare first.
QUICK_METHODS = ("full", "lora", "loreft", "bitfit")
QUICK_CONTINUAL_METHODS = ("lora", "prompt")
QUICK_CONTINUAL_TASKS = ("sentiment", "topic")
QUICK_PLACEMENT_DOMAINS = ("sentiment",)
CONTINUAL_BUDGET = {"full": Budget(train_sizes=(1000,), steps=25, batch_size=16, test_size=150, validation_size=64,
                                   eval_every=25, latency_repeats=3),
                    "quick": Budget(train_sizes=(200,), steps=8, batch_size=8, test_size=60, validation_size=16,
                                    eval_every=8, latency_repeats=1)}


@dataclasses.dataclass(frozen=True)
class SurveyOptions:
    """What the command line chose (the profile's values where it chose nothing)."""

    domains: tuple[Domain, ...]
    methods: tuple[StudyMethod, ...]
    continual_methods: tuple[StudyMethod, ...]
    seeds: tuple[int, ...]
    modes: tuple[str, ...]
    quick: bool
    placement_domains: tuple[str, ...]
    continual_tasks: tuple[str, ...]
    continual_model: str | None = None
    device: str = "auto"
    threads: int | None = None
    save_adapters: bool = True
    train_sizes: tuple[int | None, ...] | None = None  # overrides every domain's
    steps: int | None = None  # overrides every domain's
    models: dict[str, str] = dataclasses.field(default_factory=dict)  # domain -> model
    data: dict[str, str] = dataclasses.field(default_factory=dict)  # domain -> data file

    @property
    def profile(self) -> str:
        return "quick" if self.quick else "full"


@dataclasses.dataclass(frozen=True)
class Survey:
    """The planned studies (each with its folder) and the manifest written to survey.json."""

    studies: list[tuple[Any, Path]]
    manifest: dict[str, Any]


def domain_study(domain: Domain, options: SurveyOptions, methods: Sequence[StudyMethod],
                 sizes: tuple[int | None, ...] | None = None) -> StudyConfig:
    """The compare study of one domain under the options' profile."""
    budget = domain.quick if options.quick else domain.full
    data_file = options.data.get(domain.name)  # held-out sizes of a data file: the file task's own (10% each)
    task = TaskSpec(name=data_file or domain.task or "", model=options.models.get(domain.name, domain.model),
                    max_length=domain.max_length, test_size=None if data_file else budget.test_size,
                    validation_size=None if data_file else budget.validation_size,
                    generation_examples=budget.generation_examples)
    if not task.name:
        raise StudyError(f"domain {domain.name!r} has no built-in data; give it with --domain-data "
                         f"{domain.name}=FILE.csv (columns text,label)")
    return StudyConfig(task=task, methods=tuple(methods), seeds=options.seeds, settings=_settings(budget, options),
                       train_sizes=sizes or options.train_sizes or budget.train_sizes)


def _settings(budget: Budget, options: SurveyOptions) -> RunSettings:
    return RunSettings(steps=options.steps or budget.steps, batch_size=budget.batch_size,
                       eval_every=budget.eval_every, device=options.device, threads=options.threads,
                       save_adapter=options.save_adapters, latency_repeats=budget.latency_repeats)


def plan_survey(options: SurveyOptions, out: Path, command: str) -> Survey:
    """Every study of the survey and its folder under `out`; placement variants are sized on each domain's model
    (loaded once here)."""
    studies: list[tuple[Any, Path]] = []
    domains: list[dict[str, Any]] = []
    for domain in options.domains:
        entry = {"name": domain.name, "area": domain.area, "description": domain.description}
        if "methods" in options.modes:
            study = domain_study(domain, options, options.methods)
            entry["methods"] = f"methods/{domain.name}"
            studies.append((study, out / entry["methods"]))
        if "placement" in options.modes and domain.name in options.placement_domains:
            base = domain_study(domain, options, ())
            lora = next((m for m in options.methods if m.label == PLACEMENT_METHOD), None)
            if lora is None:
                from peftlab.study.methods import parse_method

                lora = parse_method(PLACEMENT_METHOD)
            variants = placement_methods(build_task(base.task), lora)
            study = dataclasses.replace(base, methods=tuple(variants), train_sizes=(max(
                base.train_sizes, key=lambda s: float("inf") if s is None else s),))
            entry["placement"] = f"placement/{domain.name}"
            studies.append((study, out / entry["placement"]))
        domains.append(entry)
    continual = None
    if "continual" in options.modes:
        budget = CONTINUAL_BUDGET[options.profile]
        tasks = tuple(TaskSpec(name=name, model=options.continual_model, max_length=DOMAINS[name].max_length
                               if name in DOMAINS else 64, test_size=budget.test_size,
                               validation_size=budget.validation_size) for name in options.continual_tasks)
        study = ContinualStudy(tasks=tasks, methods=options.continual_methods, strategies=STRATEGIES,
                               train_size=budget.train_sizes[0], seeds=options.seeds,
                               settings=_settings(budget, options))
        continual = "continual"
        studies.append((study, out / continual))
    unmeasured = [{"name": d.name, "area": d.area, "description": d.description, "model": d.model,
                   "reason": d.unmeasured_reason} for d in DOMAINS.values()
                  if not d.offline and d.name not in {x.name for x in options.domains}]
    manifest = {"command": command, "profile": options.profile, "commit": _commit(), "modes": list(options.modes),
                "domains": domains, "continual": continual, "unmeasured": unmeasured,
                "seeds": list(options.seeds), "methods": [m.label for m in options.methods]}
    return Survey(studies, manifest)


def start_session(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write survey.json with this invocation added to its sessions (earlier sessions of a resumed survey kept)."""
    previous = load_manifest(out) if (out / SURVEY_FILE).exists() else {}
    manifest = {**manifest, "sessions": [*previous.get("sessions", []), {"started": _now(), "finished": None}]}
    save_manifest(out, manifest)
    return manifest


def end_session(out: Path, manifest: dict[str, Any]) -> None:
    manifest["sessions"][-1]["finished"] = _now()
    save_manifest(out, manifest)


def save_manifest(out: Path, manifest: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / SURVEY_FILE, json.dumps(manifest, indent=2))


def load_manifest(out: Path) -> dict[str, Any]:
    path = out / SURVEY_FILE
    if not path.exists():
        raise StudyError(f"{out} holds no {SURVEY_FILE}; run `peftlab survey --out {out}` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise StudyError(f"{path} is not readable JSON ({err})") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _commit() -> str | None:
    """The peftlab source's git commit (with "+changes" when the work tree differs), or None outside a clone."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty else "")
