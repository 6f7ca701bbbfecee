"""The study's fixed, seeded train / validation / test split and train-size subsampling."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Generic, TypeVar

from peftlab.study.errors import StudyError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Splits(Generic[T]):
    """Examples of one task, split once with a fixed seed so that every run sees the same test set."""

    train: list[T]
    validation: list[T]
    test: list[T]


def split(examples: Sequence[T], *, test: int, validation: int, seed: int) -> Splits[T]:
    """Shuffle with `seed`, then take `test`, then `validation` examples; the rest is the training pool."""
    if test + validation >= len(examples):
        raise StudyError(f"cannot hold out {test} test + {validation} validation examples from only "
                         f"{len(examples)}; lower --test-size / --validation-size")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    pick = [examples[i] for i in order]
    return Splits(train=pick[test + validation:], validation=pick[test:test + validation], test=pick[:test])


def subsample(train: list[T], size: int | None, seed: int) -> list[T]:
    """The first `size` examples of a seeded shuffle of `train` (None = all); nested: smaller sizes are prefixes."""
    if size is None or size >= len(train):
        return list(train)
    if size < 1:
        raise StudyError(f"train size must be >= 1, got {size}")
    order = list(range(len(train)))
    random.Random(seed + 1).shuffle(order)
    return [train[i] for i in order[:size]]
