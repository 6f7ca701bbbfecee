"""`peftlab survey` and `peftlab findings`: argparse wiring only; the plan is survey.py, the reports
survey_report.py and findings.py."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from peftlab.study.cli import add_run_arguments, check_out, executor_from_args, interrupted, summarise_outcome
from peftlab.study.continual import DEFAULT_SEQUENCE
from peftlab.study.domains import DEFAULT_DOMAINS, DOMAINS, QUICK_DOMAINS
from peftlab.study.errors import StudyError
from peftlab.study.methods import (
    SURVEY_METHODS,
    StudyMethod,
    parse_lr_overrides,
    resolve_methods,
    survey_method_names,
)
from peftlab.study.plan import parse_train_sizes
from peftlab.study.survey import (
    MODES,
    QUICK_CONTINUAL_METHODS,
    QUICK_CONTINUAL_TASKS,
    QUICK_METHODS,
    QUICK_PLACEMENT_DOMAINS,
    SurveyOptions,
    end_session,
    plan_survey,
    start_session,
)

DEFAULT_OUT = Path("peftlab-survey")


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    survey = subparsers.add_parser(
        "survey", help="the study on every domain (text, vision, chemistry, reasoning, dialogue), with continual "
                       "learning and placement; a cross-domain report",
        description="Run every survey method x seeds x train sizes on every domain measured offline, plus the "
                    "continual-learning and placement experiments, each run in its own process (or on Ray); "
                    "resumable. Writes OUT/report.{md,html}. --quick: a subset that finishes in minutes.")
    p = survey
    p.add_argument("--quick", action="store_true",
                   help=f"a short survey: domains {','.join(QUICK_DOMAINS)}, methods {','.join(QUICK_METHODS)}, "
                        "1 seed, small train sizes and few steps")
    p.add_argument("--domains", default=None,
                   help=f"comma-separated domains (default: {','.join(DEFAULT_DOMAINS)}; also: "
                        f"{','.join(d for d in DOMAINS if d not in DEFAULT_DOMAINS)} with --domain-data)")
    p.add_argument("--methods", default=None,
                   help="comma-separated study methods (default: every survey method, "
                        f"currently {','.join(survey_method_names())})")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default: 3; --quick: 1)")
    p.add_argument("--train-sizes", default=None, help="override every domain's train sizes, e.g. 100,1000")
    p.add_argument("--steps", type=int, default=None, help="override every domain's optimiser steps per run")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: %(default)s")
    p.add_argument("--continual-tasks", default=None,
                   help="the continual-learning task sequence (classification tasks sharing one model; default: "
                        f"{','.join(DEFAULT_SEQUENCE)}; --quick: {','.join(QUICK_CONTINUAL_TASKS)})")
    p.add_argument("--continual-model", default=None,
                   help="the continual tasks' model (default: their own, MiniLM for the default sequence)")
    p.add_argument("--continual-methods", default=None,
                   help="methods of the continual-learning runs (default: the survey's; --quick: "
                        f"{','.join(QUICK_CONTINUAL_METHODS)})")
    p.add_argument("--placement-domains", default=None,
                   help="domains of the placement experiment (default: every survey domain; --quick: "
                        f"{','.join(QUICK_PLACEMENT_DOMAINS)})")
    p.add_argument("--domain-model", action="append", default=[], metavar="DOMAIN=MODEL",
                   help="a domain's model: alias, local folder or hub id (repeatable)")
    p.add_argument("--domain-data", action="append", default=[], metavar="DOMAIN=FILE",
                   help="a domain's data file (text,label columns), e.g. protein=proteins.csv (repeatable)")
    p.add_argument("--lr", action="append", default=[], metavar="METHOD=LR", help="learning-rate override")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run")
    p.add_argument("--no-save-adapters", action="store_true", help="measure adapter size, then delete the files")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    add_run_arguments(p)
    p.set_defaults(func=run_survey)

    findings = subparsers.add_parser(
        "findings", help="write docs/findings.md and .html from a finished survey folder",
        description="The survey's cross-domain report with the command, date, commit, hardware and total time, "
                    "written to --to (default docs/findings.md) and an HTML page beside it.")
    findings.add_argument("survey", type=Path, metavar="DIR", help="the survey's output folder")
    findings.add_argument("--to", type=Path, default=Path("docs/findings.md"), help="(default: %(default)s)")
    findings.set_defaults(func=run_findings)


def _names(text: str | None, default: tuple[str, ...] | list[str]) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else list(default)


def _mapping(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in DOMAINS or not value:
            raise StudyError(f"{option} {item!r}: expected DOMAIN=VALUE with a domain of {', '.join(DOMAINS)}")
        out[key] = value
    return out


def _keys(names: list[str]) -> set[str]:
    """The names an --lr entry may use for these methods: study names and registry ids."""
    return set(names) | {SURVEY_METHODS[n][0] if n in SURVEY_METHODS else n.split(":")[0] for n in names}


def _resolve(names: list[str], lr: dict[str, float]) -> tuple[StudyMethod, ...]:
    keys = _keys(names) | {"*"}
    return tuple(resolve_methods(names, {k: v for k, v in lr.items() if k in keys}))


def options_from_args(args: argparse.Namespace) -> SurveyOptions:
    """The survey's options, every name and value checked before anything runs."""
    domain_names = _names(args.domains, QUICK_DOMAINS if args.quick else DEFAULT_DOMAINS)
    unknown = [d for d in domain_names if d not in DOMAINS]
    if unknown:
        raise StudyError(f"--domains: unknown {unknown}; domains: {', '.join(DOMAINS)}")
    modes = _names(args.modes, MODES)
    if not modes or set(modes) - set(MODES):
        raise StudyError(f"--modes {args.modes!r}: choose from {', '.join(MODES)}")
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1:
        raise StudyError(f"--seeds must be >= 1, got {seeds}")
    if args.steps is not None and args.steps < 1:
        raise StudyError(f"--steps must be >= 1, got {args.steps}")
    lr = parse_lr_overrides(args.lr)
    methods = _names(args.methods, QUICK_METHODS if args.quick else survey_method_names())
    continual = _names(args.continual_methods, QUICK_CONTINUAL_METHODS if args.quick else methods)
    unused = sorted(set(lr) - {"*"} - _keys(methods) - _keys(continual))
    if unused:
        raise StudyError(f"--lr names {unused}, which the survey does not run; fix the name or add the method")
    placement = _names(args.placement_domains, QUICK_PLACEMENT_DOMAINS if args.quick else domain_names)
    stray = [d for d in placement if d not in domain_names]
    if stray:
        raise StudyError(f"--placement-domains {stray} are not among the survey's domains ({', '.join(domain_names)})")
    check_out(args.out)
    return SurveyOptions(
        domains=tuple(DOMAINS[d] for d in domain_names), methods=_resolve(methods, lr),
        continual_methods=_resolve(continual, lr),
        seeds=tuple(range(seeds)), modes=tuple(modes), quick=args.quick, placement_domains=tuple(placement),
        continual_tasks=tuple(_names(args.continual_tasks, QUICK_CONTINUAL_TASKS if args.quick else DEFAULT_SEQUENCE)),
        continual_model=args.continual_model,
        device=args.device,
        threads=args.threads, save_adapters=not args.no_save_adapters,
        train_sizes=parse_train_sizes(args.train_sizes) if args.train_sizes else None, steps=args.steps,
        models=_mapping(args.domain_model, "--domain-model"), data=_mapping(args.domain_data, "--domain-data"))


def run_survey(args: argparse.Namespace) -> int:
    """`peftlab survey`: plan, run (or resume) every study, then write the cross-domain report."""
    from peftlab.study.progress import TqdmProgress
    from peftlab.study.runner import run_studies

    options = options_from_args(args)
    executor = executor_from_args(args)
    command = shlex.join(["peftlab", *sys.argv[1:]]) if sys.argv[1:2] == ["survey"] else "peftlab survey"
    survey = plan_survey(options, args.out, command)
    manifest = start_session(args.out, survey.manifest)
    try:
        results = run_studies(survey.studies, progress=TqdmProgress(disable=args.no_progress),
                              retry_failed=args.retry_failed, executor=executor)
    except KeyboardInterrupt:
        end_session(args.out, manifest)
        return interrupted([folder for _, folder in survey.studies])
    end_session(args.out, manifest)
    code = summarise_outcome([r for records in results for r in records], str(args.out))
    if not args.no_report:
        from peftlab.study.survey_report import build_survey_report

        md, page = build_survey_report(args.out)
        print(f"report: {md} and {page}")
    return code


def run_findings(args: argparse.Namespace) -> int:
    from peftlab.study.findings import write_findings

    md, page = write_findings(args.survey, args.to)
    print(f"findings: {md} and {page}")
    return 0
