"""`peftlab train`: one adapter for one base model and one data set, with checkpoints, resume and several processes.

OUT/ receives train.yaml (the settings used, the learning rate resolved), metrics.jsonl, tensorboard/ (when
installed), checkpoints/step-N/, adapter/ (Hugging Face PEFT's layout) and, with merge, merged/ (a transformers model
folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import peftlab
from peftlab.io.atomic import write_text_atomic
from peftlab.study.methods import StudyMethod, build_config, parse_method
from peftlab.study.tasks.base import TaskSpec
from peftlab.train import distributed
from peftlab.train.batches import BatchOrder, MicroBatches
from peftlab.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    latest_checkpoint,
    load_adapters,
    save_adapters,
    verify,
)
from peftlab.train.config import TrainConfig, TrainConfigError
from peftlab.train.data import TrainingData, build_data
from peftlab.train.loop import TrainResult, train
from peftlab.train.options import TrainOptions, to_yaml
from peftlab.train.run_log import RunLog
from peftlab.train.seed import seed_everything

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MERGED = "merged"
SETTINGS_FILE = "train.yaml"


@dataclasses.dataclass
class TrainOutcome:
    """Where the results went and what the run measured (on the main process)."""

    out: Path
    adapter: Path
    merged: Path | None
    start_step: int
    result: TrainResult
    notes: list[str]
    main: bool  # the process that wrote the files


def resolve_method(options: TrainOptions) -> StudyMethod:
    """The method (registry id, fields) and its learning rate: --lr, else the method's default."""
    spec = options.method
    if isinstance(spec, dict):
        fields = dict(spec)
        method_id = fields.pop("id", None)
        if not isinstance(method_id, str):
            raise TrainConfigError(f"method {spec!r}: a mapping needs the method's id, e.g. {{id: lora, r: 16}}")
        method = parse_method(method_id)
        method = dataclasses.replace(method, label=method_id, fields={**method.fields, **fields})
        build_config(method, {})  # checks the fields now
    else:
        method = parse_method(spec)
    return dataclasses.replace(method, lr=options.lr) if options.lr is not None else method


def run_train(options: TrainOptions, on_start: Callable[[int], None] | None = None) -> TrainOutcome:
    """Train as `options` say, in this process (one of several under torchrun / accelerate launch)."""
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    parallel, device = distributed.start(options.parallel, options.device)
    try:
        return _run(options, parallel, device, on_start)
    finally:
        distributed.stop(parallel)


def _run(options: TrainOptions, parallel: distributed.Parallel, device: torch.device,
         on_start: Callable[[int], None] | None) -> TrainOutcome:
    out = options.out_dir
    if out.exists() and not out.is_dir():
        raise TrainConfigError(f"--out {out} is a file; pass a folder (it is created if missing)")
    data = build_data(options)
    method = resolve_method(options)
    seed_everything(options.seed)
    base = data.task.build_model()
    config = build_config(method, data.task.fields_for(method.method_id))
    if options.merge and not type(config).card.mergeable:
        raise TrainConfigError(f"--merge: {type(config).card.name} is not mergeable (it stays attached); drop "
                               "--merge and load the adapter onto the base model")
    if options.gradient_checkpointing:
        enable_gradient_checkpointing(base)
    model = peftlab.adapt(base, config).to(device)
    resume_from = resume_point(options, out / CHECKPOINTS, parallel)
    start_step = int(verify(resume_from)["step"]) if resume_from is not None else 0
    if resume_from is not None:
        load_adapters(model, resume_from)
    trained = distributed.wrap(model, parallel, device)
    order = BatchOrder(len(data.train), options.batch_size, torch.Generator().manual_seed(options.seed),
                       length=_length(data))
    batches = MicroBatches(data.train, order, data.task.collate, accumulation=options.accumulation,
                           rank=parallel.rank, world_size=parallel.world_size)
    train_config = TrainConfig(steps=options.steps, lr=method.lr, warmup=options.warmup,
                               weight_decay=options.weight_decay, grad_clip=options.grad_clip,
                               eval_every=options.eval_every, device=str(device), log_every=options.log_every,
                               accumulation=options.accumulation, precision=options.precision)
    checkpointer = Checkpointer(out / CHECKPOINTS, model, trained, parallel, every=options.save_every,
                                keep=options.keep_checkpoints, identity=run_identity(options, method),
                                seed=options.seed, resume_from=resume_from)
    log = None
    if parallel.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / SETTINGS_FILE, to_yaml(dataclasses.replace(options, lr=method.lr)))
        log = RunLog(out, options.steps, start_step, progress=options.progress)
        log.note(f"{model.summary().splitlines()[-1]}; lr {method.lr:g}; "
                 + (f"resuming from {resume_from} (step {start_step})" if resume_from else "starting at step 0")
                 + (f"; {parallel.world_size} processes ({parallel.strategy})" if parallel.distributed else ""))
    if on_start is not None:
        on_start(start_step)
    task = data.task
    evaluate = (lambda m: task.evaluate(m, data.validation, device, final=False)) if data.validation else None
    try:
        with stop_signals() as stop_requested:
            result = train(trained, batches, task.loss, train_config, device=device, evaluate=evaluate,
                           on_event=log.event if log is not None else None, train_mode=task.train_mode,
                           loss_weight=task.loss_weight, parallel=parallel, checkpoints=checkpointer,
                           stop_requested=stop_requested)
        save_adapters(model, out / ADAPTER, parallel)
        merged = None
        if options.merge and parallel.is_main:
            merged = write_merged(data, out / ADAPTER, out / MERGED, options.seed)
        parallel.barrier()
    finally:
        for note in checkpointer.notes:
            if log is not None:
                log.note(note)
            else:
                print(f"process {parallel.rank}: {note}", file=sys.stderr)
        if log is not None:
            log.close()
    return TrainOutcome(out, out / ADAPTER, merged, start_step, result, checkpointer.notes, parallel.is_main)


def resume_point(options: TrainOptions, root: Path, parallel: distributed.Parallel) -> Path | None:
    """The checkpoint to continue from, as options.resume says (auto, must, never, or a folder)."""
    mode = options.resume
    if mode == "never":
        if parallel.is_main:
            shutil.rmtree(root, ignore_errors=True)
        parallel.barrier()
        return None
    if mode in ("auto", "must"):
        found = latest_checkpoint(root)
        if found is None and mode == "must":
            raise CheckpointError(f"--resume: there is no complete checkpoint in {root}; run without --resume to "
                                  "start")
        return found
    folder = Path(mode).expanduser()
    if verify(folder) is None:
        raise CheckpointError(f"--resume {folder}: not a complete checkpoint folder (OUT/{CHECKPOINTS}/step-N with "
                              "its checkpoint.json)")
    return folder


def run_identity(options: TrainOptions, method: StudyMethod) -> dict[str, Any]:
    """The settings a resumed run must share with the checkpoint's (the number of processes, accumulation,
    precision and intervals may change)."""
    digest = TaskSpec(name=options.data or "").file_digest()
    return {"data": options.data, "data_sha1": digest, "validation": options.validation, "model": options.model,
            "method": method.method_id, "method_fields": dict(method.fields), "lr": method.lr, "seed": options.seed,
            "steps": options.steps, "batch_size": options.batch_size, "max_length": options.max_length,
            "warmup": options.warmup, "weight_decay": options.weight_decay, "grad_clip": options.grad_clip,
            "chat": options.chat}


def enable_gradient_checkpointing(base: torch.nn.Module) -> None:
    """Recompute activations in backward (transformers models; non-reentrant, so frozen inputs need no grad).
    transformers 5 names it activation_checkpointing_enable, 4.x gradient_checkpointing_enable."""
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise TrainConfigError(f"--gradient-checkpointing: {type(base).__name__} does not support it (transformers "
                               "models that do have activation_checkpointing_enable)")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def write_merged(data: TrainingData, adapter: Path, folder: Path, seed: int) -> Path:
    """The base built again (seeded as for training: a fresh classification head or a random-weight alias comes out
    the same) with the saved adapter folded in, saved as a transformers model folder with the tokenizer. Built
    anew, so that it works the same whether training sharded the model (FSDP) or not."""
    seed_everything(seed)
    merged = peftlab.load(data.task.build_model(), adapter).merge_and_unload()
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    if not hasattr(merged, "save_pretrained"):
        raise TrainConfigError(f"--merge: {type(merged).__name__} is not a transformers model; it has no "
                               "save_pretrained")
    merged.save_pretrained(staging)
    tokenizer = getattr(data.task, "tokenizer", None) or getattr(getattr(data.task, "encoder", None), "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def _length(data: TrainingData) -> Callable[[int], int] | None:
    """Example sizes for length-grouped batches (None when the task's examples have no length)."""
    if not data.train or data.task.length(data.train[0]) is None:
        return None
    return lambda i: data.task.length(data.train[i])


@contextlib.contextmanager
def stop_signals() -> Iterator[Callable[[], bool]]:
    """Within this block Ctrl-C (SIGINT) and SIGTERM ask training to stop at the end of the current step (it saves
    a checkpoint); a second Ctrl-C interrupts at once. Yields the question "was a stop asked?"."""
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield asked.is_set
        return

    def handler(signum: int, frame: Any) -> None:
        if asked.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked.is_set
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
