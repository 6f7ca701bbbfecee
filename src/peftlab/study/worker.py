"""One isolated run of a study: `python -m peftlab.study.worker RUN_DIR` reads RUN_DIR/spec.json, trains, measures,
and writes RUN_DIR/result.json (status "ok", or "failed" with the reason). Progress goes to stdout as events.

Running each run in a fresh process keeps peak-memory figures (process peak RSS on CPU) from mixing between runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import socket
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

import peftlab
from peftlab.study import events, measure
from peftlab.study.data.split import Splits, subsample
from peftlab.study.methods import build_config, build_objectives
from peftlab.study.plan import RunSettings, RunSpec
from peftlab.study.results import SCHEMA_VERSION
from peftlab.study.specs import load_spec
from peftlab.study.tasks import Task, build_task
from peftlab.study.tasks.base import endless_batches
from peftlab.train import (
    move_batch,
    peak_memory_mb,
    process_peak_rss_mb,
    reset_peak_memory,
    resolve_device,
    run_evaluation,
    seed_everything,
    train,
)

SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"


class Phase:
    """The step a run is in, so that a failure says where it happened, and how long each step took."""

    def __init__(self) -> None:
        self.name = "start"
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def enter(self, name: str) -> None:
        self.close()
        self.name, self.started = name, time.perf_counter()
        events.emit("phase", phase=name)

    def close(self) -> None:
        self.seconds[self.name] = self.seconds.get(self.name, 0.0) + time.perf_counter() - self.started
        self.started = time.perf_counter()


def now() -> str:
    """The current UTC time, ISO 8601 to the millisecond (records of runs that overlap in time show it)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def base_record(spec: RunSpec) -> dict[str, Any]:
    """The identity part of a run's record (filled before anything can fail); `host` and `pid` name the process
    that filled it."""
    return {
        "schema": SCHEMA_VERSION, "run_id": spec.run_id, "status": "running", "error": None, "failed_phase": None,
        "task": spec.task_label, "model": spec.task.model, "method": spec.method.label,
        "method_id": spec.method.method_id, "train_size": spec.train_size, "seed": spec.seed, "lr": spec.method.lr,
        "steps": spec.settings.steps, "batch_size": spec.settings.batch_size, "max_length": spec.task.max_length,
        "config": {"run": spec.to_dict()}, "started_at": now(), "host": socket.gethostname(), "pid": os.getpid(),
    }


def execute(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Run `spec` and return its record; exceptions (including MemoryError) become a failed record."""
    record = base_record(spec)
    phase = Phase()
    start = time.perf_counter()
    try:
        _run(spec, run_dir, record, phase)
        record["status"] = "ok"
    except Exception as err:  # noqa: BLE001  (any failure of one run is recorded; the study goes on)
        traceback.print_exc()
        record.update(status="failed", error=f"{type(err).__name__}: {err}", failed_phase=phase.name)
    finally:
        phase.close()
        record["phase_seconds"] = phase.seconds
        record["wall_seconds"] = time.perf_counter() - start
        record["process_peak_rss_mb"] = process_peak_rss_mb()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record["process_cpu_seconds"] = usage.ru_utime + usage.ru_stime  # the whole process, imports included
        record.setdefault("peak_memory_mb", None)
        record["finished_at"] = now()
    return record


def _run(spec: RunSpec, run_dir: Path, record: dict[str, Any], phase: Phase) -> None:
    """The body of a run, phase by phase; each phase fills `record`, so a failure keeps what was measured."""
    device = _setup(spec.settings, record)
    if not isinstance(spec, RunSpec):  # a continual-learning run: several tasks in sequence
        from peftlab.study.continual_run import run_continual

        run_continual(spec, run_dir, record, phase, device)
        return
    phase.enter("load")
    task, splits, train_examples, base = _load(spec, record)
    phase.enter("adapt")
    model, config = _adapt(spec, task, base, device, record)
    phase.enter("train")
    _train(spec, task, model, splits, train_examples, device, record)
    phase.enter("test")
    _test(task, model, splits, device, record)
    phase.enter("save")
    save_adapter(model, run_dir / "adapter", spec.settings.save_adapter, record)
    phase.enter("latency")
    _latency(task, model, splits, device, spec.settings, bool(type(config).card.mergeable), record)


def _setup(settings: RunSettings, record: dict[str, Any]) -> torch.device:
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    record.update(versions=measure.versions(), hardware=measure.hardware(device),
                  memory_kind="cuda_max_allocated" if device.type == "cuda" else "process_peak_rss")
    return device


def _load(spec: RunSpec, record: dict[str, Any]) -> tuple[Task, Splits, list[Any], nn.Module]:
    """The task, its fixed split, this run's training subset, and a fresh base model (seeded)."""
    seed_everything(spec.seed)
    task = build_task(spec.task)
    splits = task.splits()
    train_examples = subsample(splits.train, spec.train_size, spec.task.data_seed)
    record.update(model=task.model_ref, task_info=task.describe(), train_examples=len(train_examples),
                  metric=task.metric, higher_is_better=task.higher_is_better, curve_metric=task.curve_metric)
    return task, splits, train_examples, task.build_model()


def _adapt(spec: RunSpec, task: Task, base: nn.Module, device: torch.device,
           record: dict[str, Any]) -> tuple[Any, Any]:
    """The method's config (task fields, then the user's) and the adapted model on `device`."""
    base_params = sum(p.numel() for p in base.parameters())
    config = build_config(spec.method, task.fields_for(spec.method.method_id))
    record["config"]["method"] = config.to_dict()
    record["mergeable"] = bool(type(config).card.mergeable)
    model = peftlab.adapt(base, config).to(device)
    for name, objective in build_objectives(spec.method).items():
        model.add_objective(name, objective)
    trainable = model.trainable_parameters()
    record.update(trainable_params=trainable, base_params=base_params, total_params=model.total_parameters(),
                  trainable_percent=100.0 * trainable / base_params, rss_after_load_mb=process_peak_rss_mb())
    return model, config


def _train(spec: RunSpec, task: Task, model: nn.Module, splits: Splits, train_examples: list[Any],
           device: torch.device, record: dict[str, Any]) -> None:
    settings = spec.settings
    config = settings.train_config(spec.method.lr, str(device))
    record["config"]["train"] = config.to_dict()
    generator = torch.Generator().manual_seed(spec.seed)  # data order
    record["batch_size"] = min(settings.batch_size, len(train_examples))  # what the batches hold (endless_batches)
    batches = endless_batches(train_examples, settings.batch_size, generator, task.collate,
                              length=task.length if settings.group_by_length else None)
    reset_peak_memory(device)
    result = train(model, batches, task.loss,
                   config, device=device, train_mode=task.train_mode,
                   evaluate=lambda m: task.evaluate(m, splits.validation, device, final=False),
                   on_event=lambda e: events.emit(e.kind, step=e.step, total=e.total, loss=e.loss,
                                                  metrics=e.metrics))
    record.update(peak_memory_mb=peak_memory_mb(device), train_seconds=result.train_seconds,
                  median_step_seconds=result.median_step_seconds, examples_per_second=result.examples_per_second,
                  final_train_loss=result.losses[-1], curve=result.curve,
                  validation={k: v for k, v in result.curve[-1].items() if k not in ("step", "train_loss")})


def _test(task: Task, model: nn.Module, splits: Splits, device: torch.device, record: dict[str, Any]) -> None:
    test = run_evaluation(model, lambda m: task.evaluate(m, splits.test, device, final=True))
    record.update(test=test, test_metric=test[task.metric])
    if not math.isfinite(record["test_metric"]):
        raise FloatingPointError(f"the test {task.metric} is {record['test_metric']}")
    record["activation_density"] = _density(task, model, splits, device)


DENSITY_EXAMPLES = 256  # test examples the activation density is measured on


def _density(task: Task, model: nn.Module, splits: Splits, device: torch.device) -> float | None:
    """The fraction of feed-forward activations above zero on the test set (what DEFT lowers); None for a model
    without transformer feed-forward sublayers (a CNN)."""
    from peftlab.errors import TargetError
    from peftlab.objectives import activation_density
    from peftlab.study.tasks.base import chunks

    examples = list(splits.test)[:DENSITY_EXAMPLES]
    batches = (move_batch(task.collate(chunk), device) for chunk in chunks(examples, 16))
    model.eval()
    try:
        return activation_density(model, ({k: v for k, v in b.items() if k != "labels"} for b in batches))
    except TargetError:
        return None


def save_adapter(model: Any, folder: Path, keep: bool, record: dict[str, Any]) -> None:
    """Save the adapter (`model.save`), measure its size, and delete it unless `keep`."""
    model.save(str(folder))
    record.update(adapter_bytes=measure.folder_bytes(folder), adapter_path=str(folder) if keep else None)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)


def _latency(task: Task, model: Any, splits: Splits, device: torch.device, settings: RunSettings,
             mergeable: bool, record: dict[str, Any]) -> None:
    """Median forward time of one test batch, unmerged, and merged when the method can merge."""
    examples = splits.test[: settings.latency_batch]
    batch = move_batch(task.collate(examples), device)
    model.eval()
    timed = lambda: task.infer(model, batch)
    latency: dict[str, Any] = {"batch": len(examples), "merged_ms": None,
                               "unmerged_ms": measure.latency_ms(timed, device, settings.latency_repeats)}
    if mergeable:
        try:
            model.merge_adapter()
        except peftlab.AdapterStateError as err:  # e.g. tied weights: the adapter stays usable unmerged
            latency["merge_error"] = str(err)
        else:
            latency["merged_ms"] = measure.latency_ms(timed, device, settings.latency_repeats)
            model.unmerge()
    record["latency"] = latency


def exit_with_parent(interval: float = 2.0) -> None:
    """Stop this worker if the study process that started it goes away (no orphaned training runs)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.study.worker", description=__doc__)
    parser.add_argument("run_dir", type=Path, help=f"folder holding {SPEC_FILE}; {RESULT_FILE} is written there")
    args = parser.parse_args(argv)
    exit_with_parent()
    spec = load_spec(json.loads((args.run_dir / SPEC_FILE).read_text(encoding="utf-8")))
    record = execute(spec, args.run_dir)
    tmp = args.run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=True), encoding="utf-8")
    tmp.replace(args.run_dir / RESULT_FILE)
    events.emit("done", status=record["status"], error=record["error"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
