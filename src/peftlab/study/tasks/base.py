"""What the study needs from a task: data, a base model, a loss, metrics, and one inference call."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from peftlab.study.data.files import DATA_FILE_SUFFIXES
from peftlab.study.data.split import Splits
from peftlab.study.errors import StudyError
from peftlab.train.batches import BatchOrder, MicroBatches

T = TypeVar("T")
Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """How to build a task; stored with every run so that a worker process rebuilds exactly the same task.

    name: a built-in task (sentiment, topic, image, dialogue, arithmetic) or a path to a .csv/.jsonl file.
    model: a model alias (minilm, tiny-bert, smollm2, tiny-llama, efficientnet-lite0), a local path or a hub id;
        None = the task's default model.
    max_length: token limit of one example (text and LM tasks).
    test_size / validation_size: held-out examples; None = the task's default.
    data_seed: seed of the fixed train/validation/test split (the same for every run of a study).
    image_size: side of the (square) images fed to the CNN.
    max_new_tokens: generation limit for exact match (LM tasks).
    generation_examples: how many test examples exact match is measured on (LM tasks; generation is slow).
    """

    name: str = "sentiment"
    model: str | None = None
    max_length: int = 64
    test_size: int | None = None
    validation_size: int | None = None
    data_seed: int = 0
    image_size: int = 64
    max_new_tokens: int = 16
    generation_examples: int = 100

    def __post_init__(self) -> None:
        counts = {"--max-length": self.max_length, "--test-size": self.test_size,
                  "--validation-size": self.validation_size, "max_new_tokens": self.max_new_tokens,
                  "generation_examples": self.generation_examples}  # --image-size: the image encoder's own minimum
        for option, value in counts.items():
            if value is not None and value < 1:
                raise StudyError(f"{option} must be >= 1, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def file_digest(self) -> str | None:
        """SHA-1 of the data file's bytes when the task is a user's file (None for a built-in task)."""
        path = Path(self.name)
        if path.suffix.lower() not in DATA_FILE_SUFFIXES or not path.is_file():
            return None
        stat = path.stat()
        return _digest(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


class Task(Protocol):
    """A task of the study. `metric` is the headline test metric; `curve_metric` is tracked on validation."""

    name: str
    model_ref: str
    metric: str
    higher_is_better: bool
    curve_metric: str

    def length(self, example: Any) -> int | None:
        """A size of an example (tokens for text) for length-grouped batches; None = no grouping."""
        ...

    def fields_for(self, method_id: str) -> dict[str, Any]:
        """Config fields a method gets on this task (e.g. a CNN's head in modules_to_save); user fields win."""
        ...

    def describe(self) -> dict[str, Any]: ...
    def build_model(self) -> nn.Module: ...
    def splits(self) -> Splits: ...
    def collate(self, examples: Sequence[Any]) -> Batch: ...
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...
    def loss_weight(self, batch: Batch) -> int:
        """What `loss` is a mean over (examples, or target tokens), to weigh micro-batches and processes."""
        ...

    def infer(self, model: nn.Module, batch: Batch) -> Any: ...
    def evaluate(self, model: nn.Module, examples: Sequence[Any], device: torch.device, *,
                 final: bool) -> dict[str, float]: ...
    def train_mode(self, model: nn.Module) -> None: ...


def endless_batches(examples: Sequence[T], batch_size: int, generator: torch.Generator,
                    collate: Callable[[Sequence[T]], Batch],
                    length: Callable[[T], int] | None = None, group: int = 32) -> Iterator[Batch]:
    """Shuffled batches epoch after epoch (see peftlab.train.batches.BatchOrder); with `length`, batches of similar
    lengths (images have no length: plain random batches)."""
    if not examples:
        raise StudyError("the training split is empty")
    by_index = None
    if length is not None and length(examples[0]) is not None:
        by_index = lambda i: length(examples[i])
    return MicroBatches(examples, BatchOrder(len(examples), batch_size, generator, by_index, group), collate)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def resolve_sizes(spec: TaskSpec, test: int, validation: int) -> tuple[int, int]:
    """The spec's held-out sizes, or the task's defaults."""
    return (spec.test_size if spec.test_size is not None else test,
            spec.validation_size if spec.validation_size is not None else validation)


@functools.lru_cache(maxsize=32)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """The file's SHA-1 (cached per path, modification time and size: run ids are asked for often)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()
