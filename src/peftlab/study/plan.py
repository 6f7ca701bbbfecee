"""A study's plan: the study config, expanded into one RunSpec per (method, train size, seed)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from peftlab.study.errors import StudyError
from peftlab.study.methods import SURVEY_METHODS, StudyMethod
from peftlab.study.tasks.base import TaskSpec
from peftlab.train.config import TrainConfig

DEFAULT_METHODS = list(SURVEY_METHODS)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Training and measuring settings shared by every run of a study (the same budget for every method).

    steps: optimiser steps per run. batch_size: training batch. eval_every: validation every k steps (learning
    curve; 0 = only at the end). warmup: fraction of steps of linear warmup. device: auto/cpu/cuda/mps.
    latency_repeats: timed inference batches (median reported). latency_batch: examples per timed batch.
    save_adapter: keep the saved adapter in the run folder (its size is measured either way).
    threads: torch CPU threads per run (None = torch's default, one per core).
    group_by_length: training batches of similar lengths (less padding; the order stays random by windows).
    """

    steps: int = 140
    batch_size: int = 16
    eval_every: int = 70
    warmup: float = 0.06
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    device: str = "auto"
    latency_repeats: int = 5
    latency_batch: int = 16
    save_adapter: bool = True
    threads: int | None = None
    group_by_length: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise StudyError(f"--steps and --batch-size must be >= 1 (got {self.steps}, {self.batch_size})")
        if self.threads is not None and self.threads < 1:
            raise StudyError(f"--threads must be >= 1, got {self.threads}")
        if self.latency_repeats < 1 or self.latency_batch < 1:
            raise StudyError("latency_repeats and latency_batch must be >= 1")

    def train_config(self, lr: float, device: str) -> TrainConfig:
        """The training loop's settings of one run (TrainConfigError when a value is out of range)."""
        return TrainConfig(steps=self.steps, lr=lr, warmup=self.warmup, weight_decay=self.weight_decay,
                           grad_clip=self.grad_clip, eval_every=self.eval_every, device=device)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one isolated run needs; `run_id` is stable, so a resumed study recognises finished runs."""

    task: TaskSpec
    method: StudyMethod
    train_size: int | None  # None = the whole training pool
    seed: int
    settings: RunSettings

    @property
    def task_label(self) -> str:
        """The task's name in records and tables."""
        return self.task.name

    @property
    def run_id(self) -> str:
        identity = self.to_dict()
        data = self.task.file_digest()
        if data is not None:  # a user's data file: edited data is a new run, not a finished one
            identity["data"] = data
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
        size = "all" if self.train_size is None else str(self.train_size)
        return f"{_slug(Path(self.task.name).stem)}-{_slug(self.method.label)}-n{size}-s{self.seed}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task.to_dict(), "method": self.method.to_dict(), "train_size": self.train_size,
                "seed": self.seed, "settings": dataclasses.asdict(self.settings)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(task=TaskSpec(**data["task"]), method=StudyMethod(**data["method"]),
                   train_size=data["train_size"], seed=data["seed"], settings=RunSettings(**data["settings"]))


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A whole study: one task, several methods, train sizes and seeds, and the user's budget for the report."""

    task: TaskSpec
    methods: tuple[StudyMethod, ...]
    train_sizes: tuple[int | None, ...]
    seeds: tuple[int, ...]
    settings: RunSettings
    budget: tuple[str, ...] = ()

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        """The tasks the study's runs use (checked before any run starts)."""
        return (self.task,)

    def runs(self) -> list[RunSpec]:
        """All runs, grouped by seed then train size, methods in the given order (full fine-tuning first helps:
        its result is the reference of every other run's delta)."""
        ordered = sorted(self.methods, key=lambda m: m.method_id != "full")
        return [RunSpec(self.task, method, size, seed, self.settings)
                for seed in self.seeds for size in self.train_sizes for method in ordered]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task.to_dict(), "methods": [m.to_dict() for m in self.methods],
                "train_sizes": list(self.train_sizes), "seeds": list(self.seeds),
                "settings": dataclasses.asdict(self.settings), "budget": list(self.budget),
                "run_ids": [r.run_id for r in self.runs()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        return cls(task=TaskSpec(**data["task"]), methods=tuple(StudyMethod(**m) for m in data["methods"]),
                   train_sizes=tuple(data["train_sizes"]), seeds=tuple(data["seeds"]),
                   settings=RunSettings(**data["settings"]), budget=tuple(data.get("budget", ())))


def parse_train_sizes(text: str) -> tuple[int | None, ...]:
    """"100,1000,all" -> (100, 1000, None)."""
    sizes: list[int | None] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "all":
            sizes.append(None)
        elif part.isdigit() and int(part) > 0:
            sizes.append(int(part))
        else:
            raise StudyError(f"--train-sizes: {part!r} is not a positive integer or 'all'")
    if not sizes:
        raise StudyError("--train-sizes is empty")
    if len(set(sizes)) != len(sizes):
        raise StudyError(f"--train-sizes {text!r} lists a size twice; each size is one set of runs")
    return tuple(sizes)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"
