"""The project's one training loop: AdamW, linear warmup and decay, gradient clipping, periodic evaluation,
and a hard stop on a non-finite loss. Task-agnostic: the caller supplies batches and a loss function."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from peftlab.errors import PeftlabError
from peftlab.train.config import TrainConfig
from peftlab.train.device import synchronize

Batch = Mapping[str, Any]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
EvalFn = Callable[[nn.Module], dict[str, float]]


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


@dataclasses.dataclass
class TrainResult:
    """Measured outcome of one training run. `curve` holds one dict per evaluation: step, train_loss, metrics."""

    steps: int
    train_seconds: float
    step_seconds: list[float]
    examples: int
    losses: list[float]
    curve: list[dict[str, float]]

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
          train_mode: Callable[[nn.Module], None] | None = None) -> TrainResult:
    """Train `model` (already on `device`) for `config.steps` steps on `batches` (an endless iterator).

    `loss_fn(model, batch)` returns the scalar loss; `evaluate(model)` returns validation metrics and is called every
    `config.eval_every` steps and after the last step (in eval mode, without gradients). `train_mode(model)` puts the
    model in training mode (default `model.train()`; a task may keep e.g. frozen batch-norm statistics fixed).
    Raises NonFiniteLossError on a NaN/inf loss. Evaluation time is not counted in `train_seconds`.
    """
    emit = on_event or (lambda event: None)
    set_train = train_mode or (lambda m: m.train())
    optimizer = build_optimizer(model, config)
    scheduler = linear_schedule(optimizer, config)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    step_seconds: list[float] = []
    losses: list[float] = []
    curve: list[dict[str, float]] = []
    examples = 0
    set_train(model)
    for step in range(1, config.steps + 1):
        synchronize(device)
        start = time.perf_counter()
        batch = move_batch(next(batches), device)
        loss = loss_fn(model, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(f"non-finite training loss ({value}) at step {step} of {config.steps} "
                                     f"(lr={config.lr:g}); try a lower learning rate")
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        step_seconds.append(time.perf_counter() - start)
        losses.append(value)
        examples += _batch_size(batch)
        if step % config.log_every == 0 or step == config.steps:
            emit(TrainEvent("step", step, config.steps, loss=value, lr=scheduler.get_last_lr()[0]))
        if evaluate is not None and (step == config.steps or (config.eval_every and step % config.eval_every == 0)):
            metrics = run_evaluation(model, evaluate)
            window = losses[-(config.eval_every or len(losses)):]
            curve.append({"step": step, "train_loss": sum(window) / len(window), **metrics})
            emit(TrainEvent("eval", step, config.steps, metrics=metrics))
            set_train(model)
    return TrainResult(steps=config.steps, train_seconds=sum(step_seconds), step_seconds=step_seconds,
                       examples=examples, losses=losses, curve=curve)


def run_evaluation(model: nn.Module, evaluate: EvalFn) -> dict[str, float]:
    """Call `evaluate` in eval mode without gradients; the caller restores training mode."""
    model.eval()
    with torch.no_grad():
        return dict(evaluate(model))
