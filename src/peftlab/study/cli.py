"""`peftlab compare` and `peftlab report`: argparse wiring only; the work is in runner.py and report.py.

The main CLI calls `add_subcommands(subparsers)`; each subcommand sets `func(args) -> int` (the exit code).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from peftlab.study.budget import parse_budgets
from peftlab.study.errors import StudyError
from peftlab.study.executors import EXECUTORS, Executor, make_executor
from peftlab.study.methods import SURVEY_METHODS, parse_lr_overrides, resolve_methods
from peftlab.study.plan import RunSettings, StudyConfig, parse_train_sizes
from peftlab.study.tasks import BUILTIN_TASKS
from peftlab.study.tasks.base import TaskSpec

DEFAULT_OUT = Path("peftlab-study")
DEFAULT_TRAIN_SIZES = "2000"


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register `compare` and `report` on the main parser's subparsers."""
    compare = subparsers.add_parser(
        "compare", help="compare fine-tuning methods on one task (default: the survey's study on tweet sentiment)",
        description="Run every method under the same step budget, each run in its own process; results go to "
                    "OUT/results.jsonl (resumable) and OUT/report.{md,html}. With no arguments: MiniLM on 3-class "
                    "tweet sentiment, all methods of the survey's table, one seed.")
    _add_compare_arguments(compare)
    compare.set_defaults(func=run_compare)
    report = subparsers.add_parser("report", help="rebuild a study's (or a survey's) report from its stored results",
                                   description="Rebuild OUT/report.md, OUT/report.html and OUT/plots from "
                                               "OUT/study.json and OUT/results.jsonl, or a survey folder's "
                                               "cross-domain report (no training).")
    report.add_argument("out", type=Path, metavar="DIR", help="the study's output folder")
    report.add_argument("--budget", action="append", default=None, metavar="LIMIT",
                        help="override the stored budget, e.g. params=1%%, memory=2000MB, time=60s")
    report.set_defaults(func=run_report)
    from peftlab.study import survey_cli

    survey_cli.add_subcommands(subparsers)


def _add_compare_arguments(p: argparse.ArgumentParser) -> None:
    defaults = RunSettings()
    p.add_argument("--task", default="sentiment",
                   help=f"built-in task ({', '.join(BUILTIN_TASKS)}) or a .csv/.jsonl file with text,label or "
                        "prompt,completion columns (default: sentiment)")
    p.add_argument("--methods", default=",".join(SURVEY_METHODS),
                   help="comma-separated study methods: survey names (%(default)s) or id:field=value:... "
                        "(e.g. lora:r=16:alpha=32)")
    p.add_argument("--model", default=None,
                   help="model alias (minilm, tiny-bert, smollm2, tiny-llama, efficientnet-lite0), local path or "
                        "hub id (default: the task's model)")
    p.add_argument("--train-sizes", default=DEFAULT_TRAIN_SIZES,
                   help="comma-separated training-set sizes, 'all' for the whole pool (default: %(default)s)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps per run (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds per configuration, 0..N-1 (default: 1)")
    p.add_argument("--lr", action="append", default=[], metavar="METHOD=LR",
                   help="learning rate override, repeatable or comma-separated: lora=2e-3, adapter=1e-3; a bare "
                        "number sets every method not named")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="(default: %(default)s)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per example (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=defaults.eval_every,
                   help="validation every k steps for the learning curve; 0 = end only (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=defaults.warmup, help="warmup fraction (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per run (default: one per core); 1 helps on a busy shared machine")
    p.add_argument("--budget", action="append", default=[], metavar="LIMIT",
                   help="the report's budget question, repeatable: params=1%%, params=100k, memory=2000MB, time=60s")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--test-size", type=int, default=None, help="held-out test examples (default: per task)")
    p.add_argument("--validation-size", type=int, default=None, help="validation examples (default: per task)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the fixed data split (default: 0)")
    p.add_argument("--image-size", type=int, default=64, help="image side for the image task (default: 64)")
    p.add_argument("--no-save-adapters", action="store_true", help="measure adapter size, then delete the files")
    add_run_arguments(p)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Options of how runs execute, shared by `compare` and `survey`."""
    p.add_argument("--run-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop a run after this long and record it as failed")
    p.add_argument("--retry-failed", action="store_true", help="re-run runs recorded as failed")
    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="local: worker processes on this machine; ray: Ray tasks on a cluster (default: local)")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="local executor: runs at once (default: 1; survey --quick: one per core); each gets cores/N "
                        "torch threads unless --threads")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="ray executor: the cluster to join (e.g. auto, or ray://head:10001); default: start a local "
                        "cluster with every core of this machine for the study")
    p.add_argument("--cpus-per-run", type=float, default=None, help="ray executor: CPUs each run reserves (1)")
    p.add_argument("--gpus-per-run", type=float, default=None, help="ray executor: GPUs each run reserves (0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="skip writing the report at the end")


def executor_from_args(args: argparse.Namespace) -> Executor:
    """The executor the run options name (checked before anything starts)."""
    if args.run_timeout is not None and not args.run_timeout > 0:
        raise StudyError(f"--run-timeout must be a positive number of seconds, got {args.run_timeout}")
    parallel = args.parallel
    if parallel is None:
        parallel = (os.cpu_count() or 1) if getattr(args, "quick", False) and args.executor == "local" else 1
    return make_executor(args.executor, parallel=parallel, run_timeout=args.run_timeout,
                         ray_address=args.ray_address, cpus_per_run=args.cpus_per_run,
                         gpus_per_run=args.gpus_per_run)


def study_from_args(args: argparse.Namespace) -> StudyConfig:
    """The StudyConfig that `compare` runs (validates every option before anything starts)."""
    task = TaskSpec(name=args.task, model=args.model, max_length=args.max_length, test_size=args.test_size,
                    validation_size=args.validation_size, data_seed=args.data_seed, image_size=args.image_size)
    settings = RunSettings(steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every,
                           warmup=args.warmup, device=args.device, save_adapter=not args.no_save_adapters,
                           threads=args.threads)
    methods = resolve_methods([m for m in args.methods.split(",") if m.strip()], parse_lr_overrides(args.lr))
    budget = tuple(b.text for b in parse_budgets(args.budget))
    if args.seeds < 1:
        raise StudyError(f"--seeds must be >= 1, got {args.seeds}")
    check_out(args.out)
    return StudyConfig(task=task, methods=tuple(methods), train_sizes=parse_train_sizes(args.train_sizes),
                       seeds=tuple(range(args.seeds)), settings=settings, budget=budget)


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} is a file; pass a folder (it is created if missing)")


def run_compare(args: argparse.Namespace) -> int:
    """`peftlab compare`: run (or resume) the study, then write its report."""
    from peftlab.study.progress import TqdmProgress
    from peftlab.study.runner import run_study

    study = study_from_args(args)
    executor = executor_from_args(args)
    try:
        records = run_study(study, args.out, progress=TqdmProgress(disable=args.no_progress),
                            retry_failed=args.retry_failed, executor=executor)
    except KeyboardInterrupt:
        return interrupted([args.out])
    code = summarise_outcome(records, str(args.out / "results.jsonl"))
    if not args.no_report:
        return _write_report(args.out, None) or code
    return code


def interrupted(folders: list[Path]) -> int:
    """What an interrupted study prints (exit code 130)."""
    from peftlab.study.results import load_records

    done = sum(len(load_records(f)) for f in folders if f.is_dir())
    where = folders[0] if len(folders) == 1 else folders[0].parent
    print(f"\ninterrupted; {done} run(s) recorded in {where}. Run the same command again to resume.")
    return 130


def summarise_outcome(records: list[dict], where: str) -> int:
    """Print how many runs succeeded; exit code 1 when none did."""
    failed = sum(r["status"] != "ok" for r in records)
    print(f"{len(records) - failed} runs ok, {failed} failed; results in {where}")
    return 0 if len(records) > failed else 1


def run_report(args: argparse.Namespace) -> int:
    """`peftlab report DIR`."""
    return _write_report(args.out, args.budget)


def _write_report(out: Path, budget: list[str] | None) -> int:
    from peftlab.study.report import build_report
    from peftlab.study.survey import SURVEY_FILE

    if (out / SURVEY_FILE).exists():  # a survey folder: its cross-domain report
        if budget:
            raise StudyError("--budget applies to a compare study; a survey's report has no budget question")
        from peftlab.study.survey_report import build_survey_report

        md, page = build_survey_report(out)
    else:
        md, page = build_report(out, budget)
    print(f"report: {md} and {page}")
    return 0
