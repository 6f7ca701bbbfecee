"""Timing and memory primitives: training steps split into phases, the floor step, plain call latency, peak RSS."""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclasses.dataclass
class StepTimes:
    """Seconds per measured step, by phase (forward, backward, optimizer) and in total."""

    forward: list[float] = dataclasses.field(default_factory=list)
    backward: list[float] = dataclasses.field(default_factory=list)
    optimizer: list[float] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> list[float]:
        return [f + b + o for f, b, o in zip(self.forward, self.backward, self.optimizer)]

    def extend(self, other: StepTimes) -> None:
        """Append another measurement's steps."""
        self.forward += other.forward
        self.backward += other.backward
        self.optimizer += other.optimizer

    def as_dict(self) -> dict[str, list[float]]:
        return {"forward": self.forward, "backward": self.backward, "optimizer": self.optimizer, "step": self.total}


def run_steps(forward: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer | None, warmup: int,
              repeats: int) -> StepTimes:
    """Time `warmup + repeats` steps of forward -> loss.backward() -> optimizer step; keep the last `repeats`."""
    times = StepTimes()
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        loss = forward()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if i >= warmup:
            times.forward.append(t1 - t0)
            times.backward.append(t2 - t1)
            times.optimizer.append(t3 - t2)
    return times


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that require gradients."""
    return [p for p in model.parameters() if p.requires_grad]


def adamw(params: list[nn.Parameter], lr: float = 1e-4) -> torch.optim.AdamW:
    """The benchmark's optimizer, with no gradients pending."""
    optimizer = torch.optim.AdamW(params, lr=lr)
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def time_training(model: nn.Module, batch: Batch, warmup: int, repeats: int) -> StepTimes:
    """Training steps (forward + backward + AdamW step) on the model's trainable parameters."""
    return run_steps(lambda: model(**batch).loss, adamw(trainable(model)), warmup, repeats)


def floor_forward(call: Callable[..., object], embeddings: nn.Module, batch: Batch) -> Callable[[], torch.Tensor]:
    """The floor's forward through `call` (a model forward that accepts inputs_embeds): the input embeddings are
    computed once, without grad, and fed as a leaf tensor with requires_grad=True, so that the backward reaches every
    activation but no weight."""
    with torch.no_grad():
        embeds = embeddings(batch["input_ids"])  # (B, T) -> (B, T, D)
    leaf = embeds.detach().requires_grad_(True)
    rest = {k: v for k, v in batch.items() if k != "input_ids"}

    def forward() -> torch.Tensor:
        leaf.grad = None
        return call(inputs_embeds=leaf, **rest).loss

    return forward


def time_floor(model: nn.Module, batch: Batch, warmup: int, repeats: int) -> tuple[StepTimes, StepTimes]:
    """The floor: every parameter frozen; gradients flow to a leaf `inputs_embeds` only (no weight grads, no
    optimizer). Any method's step needs at least this forward and this activation backward.

    Measured in pairs of two floor steps, as `time_training_paired` pairs a step with a floor step: returns (first,
    second) of each pair. The second against the first is an A/A control, what two identical steps measure, i.e.
    the resolution of every "× floor" ratio of the run.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    forward = floor_forward(model, model.get_input_embeddings(), batch)
    firsts, seconds = StepTimes(), StepTimes()
    for i in range(warmup + repeats):
        first, second = run_steps(forward, None, 0, 1), run_steps(forward, None, 0, 1)
        if i >= warmup:
            firsts.extend(first)
            seconds.extend(second)
    return firsts, seconds


@contextlib.contextmanager
def frozen(params: list[nn.Parameter]) -> Iterator[None]:
    """Temporarily stop gradients to `params`."""
    for param in params:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(True)


def time_training_paired(model: nn.Module, batch: Batch, floor_step: Callable[[], torch.Tensor],
                         bypass: Callable[[], contextlib.AbstractContextManager], warmup: int,
                         repeats: int) -> tuple[StepTimes, list[float]]:
    """Training steps (as time_training), each preceded by a floor step on the same base weights in the same process.

    `floor_step` is a floor forward (see floor_forward) and `bypass` a context in which the method is switched off.
    Returns (training step times, floor step times): the ratio of each pair is measured seconds apart, so machine
    load that drifts over minutes cancels out of it.
    """
    params = trainable(model)
    optimizer = adamw(params)
    times, floors = StepTimes(), []
    for i in range(warmup + repeats):
        with bypass(), frozen(params):
            floor = run_steps(floor_step, None, 0, 1)
        step = run_steps(lambda: model(**batch).loss, optimizer, 0, 1)
        if i >= warmup:
            floors += floor.total
            times.extend(step)
    return times, floors


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn` for the last `repeats` of `warmup + repeats` calls."""
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times
