"""Which examples each optimiser step sees: seeded shuffles epoch after epoch, cut into global batches.

A global batch is split into `accumulation x processes` equal micro-batches: process r takes micro-batches
r, r + P, r + 2P, ... of it. So the examples of a step do not depend on the number of processes or accumulation steps,
and the position in the data is two numbers and a generator state (`state_dict`): a resumed run, on any number of
processes, continues with the batch an uninterrupted run would have seen next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import torch

from peftlab.errors import PeftlabError

T = TypeVar("T")
Batch = dict[str, Any]


class BatchOrder:
    """Global batches of indices into `count` examples, shuffled by `generator` epoch after epoch.

    The last incomplete batch of an epoch is dropped (batches hold min(batch_size, count) examples). With `length`
    (index -> size), each window of `group` batches is sorted by size before it is cut into batches, and the
    batches are shuffled again: batches hold similar lengths, so less padding is computed, while the order stays
    random at the scale of the window.
    """

    def __init__(self, count: int, batch_size: int, generator: torch.Generator,
                 length: Callable[[int], int] | None = None, group: int = 32) -> None:
        if count < 1:
            raise PeftlabError("the training split is empty")
        self.count = count
        self.size = min(batch_size, count)
        self.generator = generator
        self.length = length
        self.group = group
        self.epoch = 0
        self.offset = 0  # batches of the current epoch already handed out
        self._epoch_start = generator.get_state()
        self._batches = self._draw_epoch()

    def _draw_epoch(self) -> list[list[int]]:
        order = torch.randperm(self.count, generator=self.generator).tolist()
        order = order[: len(order) - len(order) % self.size]
        batches = [order[i:i + self.size] for i in range(0, len(order), self.size)]
        return self._length_grouped(batches) if self.length is not None else batches

    def _length_grouped(self, batches: list[list[int]]) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(batches), self.group):
            window = sorted((i for batch in batches[start:start + self.group] for i in batch), key=self.length)
            size = len(batches[start])
            regrouped = [window[i:i + size] for i in range(0, len(window), size)]
            out.extend(regrouped[j] for j in torch.randperm(len(regrouped), generator=self.generator).tolist())
        return out

    def next_batch(self) -> list[int]:
        """The next global batch (indices), starting a new epoch when the current one is used up."""
        if self.offset == len(self._batches):
            self.epoch, self.offset = self.epoch + 1, 0
            self._epoch_start = self.generator.get_state()
            self._batches = self._draw_epoch()
        self.offset += 1
        return self._batches[self.offset - 1]

    def state_dict(self) -> dict[str, Any]:
        """The position: {"epoch", "offset", "batch_size", "examples"} and the generator state at the epoch's start."""
        return {"epoch": self.epoch, "offset": self.offset, "batch_size": self.size, "examples": self.count,
                "generator": self._epoch_start.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by `state_dict` (same data and batch size, or PeftlabError)."""
        if (state["examples"], state["batch_size"]) != (self.count, self.size):
            raise PeftlabError(f"the checkpoint's data position is for {state['examples']} examples in batches of "
                               f"{state['batch_size']}; this run has {self.count} in batches of {self.size}. Resume "
                               "with the same data and --batch-size")
        self.generator.set_state(state["generator"])
        self._epoch_start = state["generator"].clone()
        self._batches = self._draw_epoch()
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


def split_batch(indices: Sequence[int], accumulation: int, rank: int, world_size: int) -> list[list[int]]:
    """This process's `accumulation` micro-batches of a global batch: pieces rank, rank + P, ... of A·P equal pieces."""
    pieces = accumulation * world_size
    if len(indices) % pieces:
        raise PeftlabError(f"a batch of {len(indices)} examples does not split into {accumulation} accumulation "
                           f"step(s) x {world_size} process(es); use a batch size that is a multiple of {pieces}")
    size = len(indices) // pieces
    return [list(indices[(m * world_size + rank) * size:(m * world_size + rank + 1) * size])
            for m in range(accumulation)]


class MicroBatches(Generic[T]):
    """This process's micro-batches, step after step: an endless iterator with the position of its BatchOrder."""

    def __init__(self, examples: Sequence[T], order: BatchOrder, collate: Callable[[Sequence[T]], Batch], *,
                 accumulation: int = 1, rank: int = 0, world_size: int = 1) -> None:
        split_batch(range(order.size), accumulation, rank, world_size)  # fails now, not at the first step
        self.examples = examples
        self.order = order
        self.collate = collate
        self.accumulation, self.rank, self.world_size = accumulation, rank, world_size
        self._pending: list[list[int]] = []

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if not self._pending:
            self._pending = split_batch(self.order.next_batch(), self.accumulation, self.rank, self.world_size)
        return self.collate([self.examples[i] for i in self._pending.pop(0)])

    def state_dict(self) -> dict[str, Any]:
        if self._pending:
            raise PeftlabError("the data position is saved between optimiser steps only")
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)
        self._pending = []
