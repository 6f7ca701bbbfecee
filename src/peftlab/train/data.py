"""The data of `peftlab train`: the study's built-in data sets and file readers, its tasks (batching, loss, metrics)
and model aliases, with a training and a validation part."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from peftlab.study.data import files
from peftlab.study.data.examples import LabeledData
from peftlab.study.data.split import split
from peftlab.study.tasks import BUILTIN_TASKS, Task
from peftlab.study.tasks.base import TaskSpec
from peftlab.study.tasks.causal_lm import CausalLMTask
from peftlab.study.tasks.classification import ClassificationTask
from peftlab.study.tasks.encoders import TextEncoder
from peftlab.train.config import TrainConfigError
from peftlab.train.options import TrainOptions

DEFAULT_VALIDATION_SHARE = 0.1
MAX_DEFAULT_VALIDATION = 1000
SPLIT_SEED = 0


@dataclasses.dataclass
class TrainingData:
    """A task (how to batch, what loss, which metrics, which base model) and its examples."""

    task: Task
    train: list[Any]
    validation: list[Any]


def build_data(options: TrainOptions) -> TrainingData:
    """The task and examples named by `options.data` and `options.validation`."""
    if options.data is None:
        raise TrainConfigError("no training data: pass --data (a built-in data set such as sentiment or dialogue, or "
                               "a .csv/.jsonl file), or set data: in the --config file")
    if options.data in BUILTIN_TASKS:
        return _builtin(options)
    path = Path(options.data).expanduser()
    if path.suffix.lower() not in files.DATA_FILE_SUFFIXES:
        raise TrainConfigError(f"--data {options.data!r} is neither a built-in data set ({', '.join(BUILTIN_TASKS)}) "
                               "nor a .csv/.jsonl file")
    return _from_file(options, path)


def _held_out(validation: Any, examples: int, default: int) -> int | Path:
    """How many examples to hold out (`validation` as a count or a fraction), or the validation file."""
    if validation is None:
        return default
    if isinstance(validation, bool):
        raise TrainConfigError(f"--validation {validation!r}: give a file, a fraction or a count")
    if isinstance(validation, str):
        try:
            validation = float(validation) if "." in validation else int(validation)
        except ValueError:
            return Path(validation).expanduser()
    if isinstance(validation, float):
        if not 0 <= validation < 1:
            raise TrainConfigError(f"--validation {validation}: a fraction must be in [0, 1); a count is a whole "
                                   "number")
        return round(validation * examples)
    if validation < 0 or validation >= examples:
        raise TrainConfigError(f"--validation {validation}: cannot hold out that many of {examples} examples")
    return int(validation)


def _builtin(options: TrainOptions) -> TrainingData:
    spec = TaskSpec(name=options.data, model=options.model, max_length=options.max_length, data_seed=SPLIT_SEED)
    task = BUILTIN_TASKS[options.data](spec)
    if options.validation is None:
        splits = task.splits()
        return TrainingData(task, splits.train, splits.validation)
    count = _held_out(options.validation, int(task.describe()["examples"]), 0)
    if isinstance(count, Path):
        raise TrainConfigError(f"--validation {count}: a validation file goes with a data file, not the built-in "
                               f"data set {options.data!r}; give a count or a fraction")
    task = BUILTIN_TASKS[options.data](dataclasses.replace(spec, validation_size=max(count, 1)))
    splits = task.splits()
    if count == 0:
        return TrainingData(task, splits.train + splits.validation, [])
    return TrainingData(task, splits.train, splits.validation)


def _from_file(options: TrainOptions, path: Path) -> TrainingData:
    data = files.read_task_file(path)
    examples = data.examples if isinstance(data, LabeledData) else data
    default = min(MAX_DEFAULT_VALIDATION, round(DEFAULT_VALIDATION_SHARE * len(examples)))
    held = _held_out(options.validation, len(examples), default)
    if isinstance(held, Path):
        names = data.label_names if isinstance(data, LabeledData) else None
        other = files.read_task_file(held, label_names=names)
        validation = other.examples if isinstance(other, LabeledData) else other
        if isinstance(other, LabeledData) != isinstance(data, LabeledData):
            raise TrainConfigError(f"--validation {held} holds another kind of data than --data {path} (labels "
                                   "against prompts)")
        train = list(examples)
    else:
        parts = split(examples, test=0, validation=held, seed=SPLIT_SEED)
        train, validation = parts.train, parts.validation
    spec = TaskSpec(name=str(path), model=options.model, max_length=options.max_length, data_seed=SPLIT_SEED)
    if isinstance(data, LabeledData):
        encoder = TextEncoder(options.model or "minilm", options.max_length)
        task: Task = ClassificationTask(path.stem, data, encoder, spec, test=0, validation=len(validation))
    else:
        task = CausalLMTask(path.stem, list(examples), spec, model_ref=options.model or "smollm2", test=0,
                            validation=len(validation), chat=options.chat, metric="perplexity",
                            curve_metric="perplexity")
    return TrainingData(task, list(train), list(validation))
