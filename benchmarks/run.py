"""Run the side-by-side benchmark suite and write the Markdown report.

    .venv/bin/python -m benchmarks.run --out BENCHMARKS.md
    .venv/bin/python -m benchmarks.run --models llama-small,minilm --configs floor,lora_qv --repeats 3
    .venv/bin/python -m benchmarks.run --quick --models llama-tiny --configs floor,lora_qv   # seconds

Jobs run one at a time, each in its own process; progress goes to stderr, the report to stdout and --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

from benchmarks.configs import ALL_CONFIGS, check_configs
from benchmarks.jobs import ALLOCATORS, Settings, plan, run_job
from benchmarks.models import PRESETS, get_preset
from benchmarks.report import pool, render

DEFAULT_MODELS = ("llama", "minilm", "smollm2")


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=_list, default=list(DEFAULT_MODELS),
                        help=f"comma-separated presets from {', '.join(PRESETS)} (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--configs", type=_list, default=list(ALL_CONFIGS),
                        help=f"comma-separated configurations from {', '.join(ALL_CONFIGS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="measured steps per process (default 5; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default 2; quick 1)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="processes per configuration, alternating the order (default 2; quick 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads in every worker (default 2; quick 1)")
    parser.add_argument("--allocator", choices=list(ALLOCATORS), default="system",
                        help="CPU memory allocator settings of every worker: system (the C library's defaults) or "
                             "retain (freed memory stays in the process; glibc only; see benchmarks/README.md)")
    parser.add_argument("--quick", action="store_true", help="tiny batches (2 x 32) and few repeats: a plumbing check")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per worker process")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument("--raw", type=Path, default=None,
                        help="also write every job's raw result (all step times, per round) as JSON here")
    args = parser.parse_args(argv)
    for name in args.models:
        get_preset(name)
    check_configs(args.configs)
    defaults = {"repeats": (5, 2), "warmup": (2, 1), "rounds": (2, 1), "threads": (2, 1)}  # (full, quick)
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    settings = Settings(warmup=args.warmup, repeats=args.repeats, threads=args.threads, quick=args.quick,
                        timeout_s=args.timeout, allocator=args.allocator)
    jobs = plan(args.models, args.configs, args.rounds)
    load_start = os.getloadavg()[0]
    runs = []
    for i, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        result = run_job(job, settings)
        runs.append((job, result))
        step = result.get("times", {}).get("step") or result.get("times", {}).get("latency") or []
        shown = f"median {sorted(step)[len(step) // 2]:.3f} s" if step else result.get("note", "")
        print(f"[{i}/{len(jobs)}] {job.model} {job.config} {job.library} (round {job.round}): {result['status']} "
              f"{shown} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    command = shlex.join(["python", "-m", "benchmarks.run", *argv])
    report = render(args.models, args.configs, pool(runs), settings, args.rounds, command,
                    (load_start, os.getloadavg()[0]))
    print(report)
    if args.raw is not None:
        raw = [{**dataclasses.asdict(job), **result} for job, result in runs]
        args.raw.write_text(json.dumps({"command": command, "runs": raw}, indent=1) + "\n")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
