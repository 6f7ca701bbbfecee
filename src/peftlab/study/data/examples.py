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


class Conversation(NamedTuple):
    """A chat as (role, content) turns; the model is trained on the assistant turns. `prompt` / `completion` are the
    turns before the last assistant turn and that turn (what exact match compares)."""

    messages: tuple[tuple[str, str], ...]

    @property
    def last_reply(self) -> int:
        return max(i for i, (role, _) in enumerate(self.messages) if role == "assistant")

    @property
    def prompt(self) -> str:
        return "\n".join(content for _, content in self.messages[: self.last_reply])

    @property
    def completion(self) -> str:
        return self.messages[self.last_reply][1]


class LabeledData(NamedTuple):
    """A classification data set: examples and the names of the classes (index = label)."""

    examples: list[Labeled]
    label_names: list[str]
