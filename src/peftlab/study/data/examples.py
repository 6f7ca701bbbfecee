"""The three kinds of example the study's tasks use."""

from __future__ import annotations

from typing import Any, NamedTuple


class Labeled(NamedTuple):
    """An input (a text, or an image array of shape (H, W) or (C, H, W) in [0, 1]) and its class index."""

    x: Any
    label: int


class PromptCompletion(NamedTuple):
    """A causal-LM example: the model is trained (and scored) on `completion` given `prompt`."""

    prompt: str
    completion: str


class LabeledData(NamedTuple):
    """A classification data set: examples and the names of the classes (index = label)."""

    examples: list[Labeled]
    label_names: list[str]
