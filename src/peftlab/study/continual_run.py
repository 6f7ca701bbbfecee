"""The worker's body of one continual-learning run (see continual.py): train the tasks in order, test every task
seen so far after each, and fill the record (test_metric = final mean accuracy over the tasks)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import peftlab
from peftlab.study import events
from peftlab.study.continual import ContinualRunSpec, forgetting
from peftlab.study.data.examples import Labeled
from peftlab.study.data.split import subsample
from peftlab.study.errors import StudyError
from peftlab.study.methods import build_config
from peftlab.study.tasks import build_task
from peftlab.study.tasks.base import Batch, endless_batches
from peftlab.study.tasks.classification import ClassificationTask
from peftlab.study.tasks.encoders import Encoder
from peftlab.train import peak_memory_mb, process_peak_rss_mb, reset_peak_memory, run_evaluation, seed_everything, train


@dataclasses.dataclass
class HeadSlice:
    """An encoder whose model has one head for all tasks; this task reads its own `count` logits from `offset`."""

    inner: Encoder
    offset: int
    count: int
    total: int

    def __getattr__(self, name: str) -> Any:  # tokenisation, lengths, targets, ...: the inner encoder's
        return getattr(self.inner, name)

    def build_model(self, num_labels: int) -> nn.Module:
        return self.inner.build_model(self.total)

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.inner.logits(model, batch)[:, self.offset:self.offset + self.count]  # (B, total) -> (B, count)


def sliced_tasks(spec: ContinualRunSpec) -> list[ClassificationTask]:
    """The run's tasks, each reading its own slice of one shared output head."""
    tasks = [build_task(t) for t in spec.tasks]
    if not all(isinstance(t, ClassificationTask) for t in tasks):
        raise StudyError("continual learning runs classification tasks only")
    total = sum(len(t.data.label_names) for t in tasks)
    out, offset = [], 0
    for task in tasks:
        count = len(task.data.label_names)
        out.append(ClassificationTask(task.name, task.data, HeadSlice(task.encoder, offset, count, total), task.spec,
                                      test=task.test_size, validation=task.validation_size))
        offset += count
    return out


def run_continual(spec: ContinualRunSpec, run_dir: Path, record: dict[str, Any], phase: Any,
                  device: torch.device) -> None:
    """Train each task in turn (a new adapter per task, or the one shared adapter), testing all tasks seen so far
    after each; `phase` names the step a failure happened in."""
    phase.enter("load")
    seed_everything(spec.seed)
    tasks = sliced_tasks(spec)
    splits = [t.splits() for t in tasks]
    train_sets = [subsample(s.train, spec.train_size, t.spec.data_seed) for t, s in zip(tasks, splits)]
    base = tasks[0].build_model()
    base_params = sum(p.numel() for p in base.parameters())
    record.update(model=tasks[0].model_ref, metric="accuracy", higher_is_better=True, curve_metric="accuracy",
                  train_examples=len(train_sets[0]), task_info={"tasks": [t.describe() for t in tasks]})
    phase.enter("adapt")
    config = build_config(spec.method, tasks[0].fields_for(spec.method.method_id))
    record["config"]["method"] = config.to_dict()
    record["mergeable"] = bool(type(config).card.mergeable)
    model = peftlab.adapt(base, config, adapter_name=_adapter(spec, 0)).to(device)
    matrix: list[list[float]] = []
    trainable = train_seconds = 0.0
    curve: list[dict[str, float]] = []
    reset_peak_memory(device)
    for i, task in enumerate(tasks):
        phase.enter("train")
        if spec.strategy == "per-task" and i > 0:
            model.add_adapter(_adapter(spec, i), config)
            model.to(device)
        model.set_adapter(_adapter(spec, i))
        trainable += model.trainable_parameters() if spec.strategy == "per-task" or i == 0 else 0
        result = _train_one(spec, task, model, train_sets[i], splits[i].validation, device)
        train_seconds += result.train_seconds
        curve += [{**point, "step": point["step"] + i * spec.settings.steps, "task": i} for point in result.curve]
        phase.enter("test")
        matrix.append([_test(spec, model, j, tasks[j], splits[j].test, device) for j in range(i + 1)])
        events.emit("eval", step=(i + 1) * spec.settings.steps, total=len(tasks) * spec.settings.steps, loss=None,
                    metrics={f"test {t.name}": a for t, a in zip(tasks, matrix[-1])})
    final = sum(matrix[-1]) / len(matrix[-1])
    record.update(
        trainable_params=int(trainable), base_params=base_params, total_params=model.total_parameters(),
        trainable_percent=100.0 * trainable / base_params, peak_memory_mb=peak_memory_mb(device),
        train_seconds=train_seconds, curve=curve, test_metric=final,
        test={"accuracy": final, **{f"accuracy_{t.name}": a for t, a in zip(tasks, matrix[-1])}},
        rss_after_load_mb=process_peak_rss_mb(), latency=None,
        continual={"tasks": [t.name for t in tasks], "strategy": spec.strategy, "accuracy_matrix": matrix,
                   "final_accuracy": final, "forgetting": forgetting(matrix)})
    phase.enter("save")
    from peftlab.study.worker import save_adapter

    save_adapter(model, run_dir / "adapter", spec.settings.save_adapter, record)


def _adapter(spec: ContinualRunSpec, index: int) -> str:
    return f"task{index}" if spec.strategy == "per-task" else "shared"


def _train_one(spec: ContinualRunSpec, task: ClassificationTask, model: nn.Module, examples: Sequence[Labeled],
               validation: Sequence[Labeled], device: torch.device) -> Any:
    settings = spec.settings
    generator = torch.Generator().manual_seed(spec.seed)
    batches = endless_batches(list(examples), settings.batch_size, generator, task.collate,
                              length=task.length if settings.group_by_length else None)
    return train(model, batches, task.loss, settings.train_config(spec.method.lr, str(device)), device=device,
                 train_mode=task.train_mode,
                 evaluate=lambda m: task.evaluate(m, validation, device, final=False),
                 on_event=lambda e: events.emit(e.kind, step=e.step, total=e.total, loss=e.loss, metrics=e.metrics))


def _test(spec: ContinualRunSpec, model: Any, index: int, task: ClassificationTask, examples: Sequence[Labeled],
          device: torch.device) -> float:
    """Test accuracy on task `index` (with its own adapter when each task has one)."""
    active = model.active_adapter
    model.set_adapter(_adapter(spec, index))
    try:
        return run_evaluation(model, lambda m: task.evaluate(m, examples, device, final=True))["accuracy"]
    finally:
        model.set_adapter(active)
