"""Plan the jobs of a run (interleaved) and run each one in its own subprocess."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "RESULT "  # the worker's last stdout line: RESULT <json>
LIBRARY_NAMES = {"hf": "HF PEFT", "peftlab": "peftlab", "torch": "torch", "floor": "torch", "base": "torch"}

# What each --allocator choice puts in the workers' environment. "retain" keeps freed memory in the process, as
# PyTorch's CUDA caching allocator does on a GPU: glibc never trims the heap back to the OS, and blocks up to 32 MiB
# (glibc's ceiling) come from the heap, not from a fresh mmap. Otherwise each training step faults in anew the pages
# the previous step gave back, which costs more for a larger working set (an adapter's saved activations) than for
# the floor's. Only glibc reads GLIBC_TUNABLES; elsewhere both choices measure the same thing.
ALLOCATORS: dict[str, dict[str, str]] = {
    "system": {},
    "retain": {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=4294967295:glibc.malloc.mmap_threshold=33554432"},
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How every job of a run is measured."""

    warmup: int
    repeats: int
    threads: int
    quick: bool
    timeout_s: float
    allocator: str = "system"  # a key of ALLOCATORS


@dataclasses.dataclass(frozen=True)
class Job:
    """One subprocess: a configuration of one model with one library, in one round."""

    model: str
    config: str
    library: str  # "floor", "torch", "base", "hf" or "peftlab"
    round: int

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.config, self.library


def libraries_for(config: str, flip: bool) -> list[str]:
    """The libraries a configuration runs with; `flip` puts peftlab before HF PEFT."""
    if config == "floor":
        return ["floor"]
    if config == "full":
        return ["torch"]
    pair = ["peftlab", "hf"] if flip else ["hf", "peftlab"]
    return ["base", *pair] if config == "infer" else pair


def plan(models: list[str], configs: list[str], rounds: int) -> list[Job]:
    """All jobs, interleaved: within a round the two libraries alternate which goes first from one configuration to
    the next, and every other round runs in reverse order, so slow drifts of the machine hit both sides alike."""
    jobs: list[Job] = []
    for r in range(rounds):
        sequence = [Job(model, config, library, r)
                    for model in models
                    for i, config in enumerate(configs)
                    for library in libraries_for(config, flip=i % 2 == 1)]
        jobs += sequence[::-1] if r % 2 else sequence
    return jobs


def allocator_env(allocator: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables `allocator` sets in a worker; a GLIBC_TUNABLES already in `environ` is kept (later
    entries win in glibc, so ours come last)."""
    settings = ALLOCATORS[allocator]
    return {name: ":".join(filter(None, [environ.get(name), value])) for name, value in settings.items()}


def run_job(job: Job, settings: Settings) -> dict[str, Any]:
    """Run one job in a fresh Python process and return its result dict (status "ok", "skipped" or "error")."""
    payload = json.dumps({"model": job.model, "config": job.config, "library": job.library,
                          "warmup": settings.warmup, "repeats": settings.repeats, "threads": settings.threads,
                          "quick": settings.quick})
    threads = str(settings.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           **allocator_env(settings.allocator, os.environ)}
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", payload], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=settings.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "error", "note": f"timed out after {settings.timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {"status": "error", "note": f"worker exited {proc.returncode}: {tail}"}

