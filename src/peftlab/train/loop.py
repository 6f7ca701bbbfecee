"""The project's one training loop: AdamW, linear warmup and decay, gradient clipping, gradient accumulation,
autocast, several processes (DDP / FSDP), periodic evaluation, checkpoints and resume, and a hard stop on a
non-finite loss. Task-agnostic: the caller supplies batches and a loss function."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import torch
from torch import nn

from peftlab.errors import PeftlabError
from peftlab.train.config import TrainConfig
from peftlab.train.device import synchronize
from peftlab.train.distributed import Parallel

Batch = Mapping[str, Any]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
EvalFn = Callable[[nn.Module], dict[str, float]]
WeightFn = Callable[[Batch], int]


class NonFiniteLossError(PeftlabError, FloatingPointError):
    """The training loss became NaN or infinite (usually a learning rate that is too high for the method)."""


@dataclasses.dataclass
class TrainEvent:
    """What the loop reports as it goes: kind is "step" (with loss) or "eval" (with metrics)."""

    kind: str
    step: int
    total: int
    loss: float | None = None
    lr: float | None = None
    metrics: dict[str, float] | None = None


class TrainingStopped(PeftlabError):
    """Training stopped at a step boundary because a stop was requested (Ctrl-C); `step` steps are done."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"training stopped after step {step} of {total}")
        self.step = step


@dataclasses.dataclass
class LoopState:
    """What a checkpoint holds besides the model: the optimiser, the schedule, the fp16 loss scale and the data
    position (`batches`, when it has state_dict / load_state_dict)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    batches: Any


class Checkpointing(Protocol):
    """Saves and restores a run (peftlab.train.checkpoint.Checkpointer)."""

    def restore(self, state: LoopState) -> int:
        """Load the last checkpoint into `state` (and the model); return the steps it had done (0: none)."""
        ...

    def step_done(self, state: LoopState, step: int, *, final: bool, stopping: bool) -> None:
        """Called after every step (after its evaluation); writes a checkpoint when one is due."""
        ...


@dataclasses.dataclass
class TrainResult:
    """Measured outcome of one training run. `curve` holds one dict per evaluation: step, train_loss, metrics."""

    steps: int
    train_seconds: float
    step_seconds: list[float]
    examples: int
    losses: list[float]
    curve: list[dict[str, float]]
    start_step: int = 0  # steps a resumed run found done; the lists above hold the steps run in this process

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.train_seconds if self.train_seconds > 0 else float("nan")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norm weights (ndim < 2) get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PeftlabError("the model has no trainable parameters; adapt it with a method before training")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def linear_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear ramp 0 -> lr over the warmup steps, then linear decay to 0 at the last step."""
    warmup_steps = int(config.warmup * config.steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (config.steps - step) / max(1, config.steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def move_batch(batch: Batch, device: torch.device) -> dict[str, Any]:
    """Tensors of the batch on `device`; other values untouched."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_size(batch: Batch) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


def train(model: nn.Module, batches: Iterator[Batch], loss_fn: LossFn, config: TrainConfig, *,
          device: torch.device, evaluate: EvalFn | None = None,
          on_event: Callable[[TrainEvent], None] | None = None,
          train_mode: Callable[[nn.Module], None] | None = None, loss_weight: WeightFn | None = None,
          parallel: Parallel | None = None, checkpoints: Checkpointing | None = None,
          stop_requested: Callable[[], bool] | None = None) -> TrainResult:
    """Train `model` (already on `device`) for `config.steps` steps on `batches` (an endless iterator).

    Each step draws `config.accumulation` micro-batches. `loss_fn(model, batch)` returns the mean loss of a batch
    and `loss_weight(batch)` what it is a mean over (default: the examples; a language model's loss: its target
    tokens), so that a step's gradient is that of the mean over all its micro-batches on all processes, whatever
    their number. `evaluate(model)` returns validation metrics and is called every `config.eval_every` steps and
    after the last step (in eval mode, without gradients). `train_mode(model)` puts the model in training mode
    (default `model.train()`; a task may keep e.g. frozen batch-norm statistics fixed).

    Under several processes (`parallel`), `model` is the DDP / FSDP model and `batches` this process's share.
    `checkpoints` restores a saved run before the first step and saves after each step. When `stop_requested()`
    turns true on any process, the loop stops after the current step, saves, and raises TrainingStopped.
    Raises NonFiniteLossError on a NaN/inf loss. Evaluation time is not counted in `train_seconds`.
    """
    emit = on_event or (lambda event: None)
    set_train = train_mode or (lambda m: m.train())
    parallel = parallel or Parallel()
    optimizer = build_optimizer(model, config)
    scheduler = linear_schedule(optimizer, config)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    state = LoopState(optimizer, scheduler, scaler, batches)
    start = checkpoints.restore(state) if checkpoints is not None else 0
    params = [p for group in optimizer.param_groups for p in group["params"]]
    step_seconds: list[float] = []
    losses: list[float] = []
    curve: list[dict[str, float]] = []
    examples = 0
    set_train(model)
    for step in range(start + 1, config.steps + 1):
        synchronize(device)
        began = time.perf_counter()
        micro = [move_batch(next(batches), device) for _ in range(config.accumulation)]
        value = _accumulate_gradients(model, micro, loss_fn, loss_weight or _batch_size, config, parallel, device,
                                      scaler)
        if not math.isfinite(value):
            raise NonFiniteLossError(f"non-finite training loss ({value}) at step {step} of {config.steps} "
                                     f"(lr={config.lr:g}); try a lower learning rate")
        if scaler is not None:
            scaler.unscale_(optimizer)
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        step_seconds.append(time.perf_counter() - began)
        losses.append(value)
        examples += sum(_batch_size(b) for b in micro)
        if step % config.log_every == 0 or step == config.steps:
            emit(TrainEvent("step", step, config.steps, loss=value, lr=scheduler.get_last_lr()[0]))
        if evaluate is not None and (step == config.steps or (config.eval_every and step % config.eval_every == 0)):
            with autocast(device, config.precision):
                metrics = run_evaluation(model, evaluate)
            window = losses[-(config.eval_every or len(losses)):]
            curve.append({"step": step, "train_loss": sum(window) / len(window), **metrics})
            emit(TrainEvent("eval", step, config.steps, metrics=metrics))
            set_train(model)
        stopping = stop_requested is not None and parallel.any(stop_requested(), device)
        if checkpoints is not None:
            checkpoints.step_done(state, step, final=step == config.steps, stopping=stopping)
        if stopping and step < config.steps:
            raise TrainingStopped(step, config.steps)
    return TrainResult(steps=config.steps, train_seconds=sum(step_seconds), step_seconds=step_seconds,
                       examples=examples, losses=losses, curve=curve, start_step=start)


def _accumulate_gradients(model: nn.Module, micro: list[dict[str, Any]], loss_fn: LossFn, weight_of: WeightFn,
                          config: TrainConfig, parallel: Parallel, device: torch.device,
                          scaler: torch.amp.GradScaler | None) -> float:
    """Backward through every micro-batch of a step; the step's mean loss over all processes.

    Each micro-batch's loss gets the model's regularization terms added (`regularization`). Micro-batch i of weight
    w_i (examples or tokens) contributes its mean loss times w_i · P / W, where W is the
    step's total weight over the P processes: DDP and FSDP average gradients over processes (the factor P undoes
    it), so the summed gradient is that of the mean over the whole step. With one batch on one process the factor
    is exactly 1.
    """
    weights = [int(weight_of(b)) for b in micro]
    total = parallel.sum(float(sum(weights)), device)
    loss_sum = 0.0
    for i, batch in enumerate(micro):
        with parallel.gradient_sync(model, sync=i == len(micro) - 1), autocast(device, config.precision):
            loss = loss_fn(model, batch)
            objective = loss + regularization(model)
            factor = weights[i] * parallel.world_size / total if total > 0 else 0.0
            scaled = objective if factor == 1.0 else objective * factor
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += float(loss.detach()) * weights[i]
    return parallel.sum(loss_sum, device) / total if total > 0 else 0.0


def regularization(model: nn.Module) -> torch.Tensor | float:
    """The adapted model's regularization_loss() (its methods' and objectives' terms, e.g. KaSA's, DEFT's), looked up
    through a DDP / FSDP wrapper; 0 for a plain model. The reported loss stays the task's."""
    adapted = getattr(model, "module", model)
    terms = getattr(adapted, "regularization_loss", None)
    return terms() if callable(terms) else 0.0


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast in bf16 / fp16, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def run_evaluation(model: nn.Module, evaluate: EvalFn) -> dict[str, float]:
    """Call `evaluate` in eval mode without gradients; the caller restores training mode."""
    model.eval()
    with torch.no_grad():
        return dict(evaluate(model))
