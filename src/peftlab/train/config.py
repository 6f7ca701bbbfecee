"""The training loop's settings: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from peftlab.errors import PeftlabError


class TrainConfigError(PeftlabError, ValueError):
    """A training setting is out of range (raised when the TrainConfig is built)."""


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of `peftlab.train.train`.

    steps: optimiser steps (the study's budget: every method gets the same number).
    lr: peak learning rate of AdamW, reached after `warmup` and decayed linearly to 0 at `steps`.
    warmup: fraction of `steps` (0 <= warmup < 1) with a linear ramp from 0 to `lr`.
    weight_decay: AdamW weight decay (not applied to biases and norm weights).
    grad_clip: max global gradient norm; 0 disables clipping.
    eval_every: evaluate every this many steps (and always at the last step); 0 = only at the end.
    device: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:1", "mps".
    log_every: emit a step event every this many steps.
    accumulation: micro-batches per optimiser step (gradient accumulation); the loop draws this many batches a step.
    precision: "fp32", or "bf16" / "fp16" autocast (adapter weights and their gradients stay in their own dtype;
        fp16 scales the loss against underflow).
    """

    steps: int
    lr: float
    warmup: float = 0.06
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 0
    device: str = "auto"
    log_every: int = 1
    accumulation: int = 1
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise TrainConfigError(f"steps={self.steps}: need at least 1 training step")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainConfigError(f"lr={self.lr}: the learning rate must be a positive finite number")
        if not 0 <= self.warmup < 1:
            raise TrainConfigError(f"warmup={self.warmup}: a fraction of the steps in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise TrainConfigError("weight_decay and grad_clip must be >= 0")
        if self.eval_every < 0 or self.log_every < 1:
            raise TrainConfigError("eval_every must be >= 0 and log_every >= 1")
        if self.accumulation < 1:
            raise TrainConfigError(f"accumulation={self.accumulation}: at least 1 micro-batch per step")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (inverse: TrainConfig(**d))."""
        return dataclasses.asdict(self)
