"""Continual learning as a study (after Wistuba et al., "Choice of PEFT Technique in Continual Learning"): one
base model learns a sequence of classification tasks, either with one adapter per task (trained on its task only,
selected by the task at test time) or with one adapter shared by all tasks (trained on each task in turn). Each
task has its own slice of the output head. A run records the accuracy on every task seen so far after each task,
the final mean accuracy and the forgetting of earlier tasks.

The plan here (ContinualStudy -> ContinualRunSpec) goes through the same runner, executors and results file as a
compare study; continual_run.py is the worker's body of one run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from peftlab.study.errors import StudyError
from peftlab.study.methods import StudyMethod
from peftlab.study.plan import RunSettings, _slug
from peftlab.study.tasks.base import TaskSpec

STRATEGIES = ("per-task", "shared")
DEFAULT_SEQUENCE = ("sentiment", "topic", "chat-topic")


@dataclasses.dataclass(frozen=True)
class ContinualRunSpec:
    """One method learning `tasks` in order with one adapter per task or one shared adapter."""

    tasks: tuple[TaskSpec, ...]
    method: StudyMethod
    strategy: str
    train_size: int | None
    seed: int
    settings: RunSettings

    @property
    def task(self) -> TaskSpec:
        """The first task (its model and max length stand for the run in records)."""
        return self.tasks[0]

    @property
    def task_label(self) -> str:
        return ">".join(t.name for t in self.tasks)

    @property
    def run_id(self) -> str:
        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        size = "all" if self.train_size is None else str(self.train_size)
        return (f"continual-{_slug(self.method.label)}-{self.strategy}-n{size}-s{self.seed}-{digest}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "continual", "tasks": [t.to_dict() for t in self.tasks], "method": self.method.to_dict(),
                "strategy": self.strategy, "train_size": self.train_size, "seed": self.seed,
                "settings": dataclasses.asdict(self.settings)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContinualRunSpec:
        return cls(tasks=tuple(TaskSpec(**t) for t in data["tasks"]), method=StudyMethod(**data["method"]),
                   strategy=data["strategy"], train_size=data["train_size"], seed=data["seed"],
                   settings=RunSettings(**data["settings"]))


@dataclasses.dataclass(frozen=True)
class ContinualStudy:
    """Every method x strategy x seed over one task sequence (the same train size and steps for each task)."""

    tasks: tuple[TaskSpec, ...]
    methods: tuple[StudyMethod, ...]
    strategies: tuple[str, ...]
    train_size: int | None
    seeds: tuple[int, ...]
    settings: RunSettings

    def __post_init__(self) -> None:
        if len(self.tasks) < 2:
            raise StudyError("continual learning needs a sequence of at least two tasks")
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown:
            raise StudyError(f"unknown continual strategies {unknown}; choose from {', '.join(STRATEGIES)}")
        models = {t.model or "minilm" for t in self.tasks}
        if len(models) > 1:
            raise StudyError(f"the continual tasks must share one model, got {sorted(models)}")

    @property
    def budget(self) -> tuple[str, ...]:
        return ()

    def runs(self) -> list[ContinualRunSpec]:
        return [ContinualRunSpec(self.tasks, method, strategy, self.train_size, seed, self.settings)
                for seed in self.seeds for method in self.methods for strategy in self.strategies]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "continual", "tasks": [t.to_dict() for t in self.tasks],
                "methods": [m.to_dict() for m in self.methods], "strategies": list(self.strategies),
                "train_size": self.train_size, "seeds": list(self.seeds),
                "settings": dataclasses.asdict(self.settings), "run_ids": [r.run_id for r in self.runs()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContinualStudy:
        return cls(tasks=tuple(TaskSpec(**t) for t in data["tasks"]),
                   methods=tuple(StudyMethod(**m) for m in data["methods"]), strategies=tuple(data["strategies"]),
                   train_size=data["train_size"], seeds=tuple(data["seeds"]),
                   settings=RunSettings(**data["settings"]))


def forgetting(matrix: list[list[float]]) -> float | None:
    """Mean forgetting of the tasks before the last: for each, its best accuracy after any earlier stage minus its
    accuracy at the end (`matrix[i][j]` = accuracy on task j after training task i, j <= i)."""
    last = len(matrix) - 1
    drops = [max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last)]
    return sum(drops) / len(drops) if drops else None
