"""The per-call context: everything one call of an adapted model needs to remember while it runs.

A forward pass used to leave state on modules (prepared inputs, masks, cache flags), so two threads running one
model, or a model called inside its own forward, interfered. Now the adapted model opens a `CallContext` when a call
of its base model starts and closes it when the call ends (even when it raises); every site finds it on the
`BaseCall` it is handed (`base.call`), and model-level adapters get it in `prepare` / `finish`.

Contexts live on a per-thread stack, so calls in different threads never see each other's, and a nested call (a
model run inside another model's forward) gets its own and then restores the outer one. A call that needs nothing
per call (only weight-delta adapters, one adapter set for the whole batch) opens no context at all: sites then see
`base.call is None`, and the hot path stays as it was.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

_LOCAL = threading.local()


class CallContext:
    """The state of one call: each model-level adapter's scratch values, the key/value positions this call wrote
    into a cache ahead of its tokens, the routing of samples or tokens to adapters, and the loss terms that
    activation-based objectives collected."""

    __slots__ = ("_scratch", "losses", "observed", "prepared", "routed_prepared", "routing", "virtual_tokens")

    def __init__(self, routing: Any = None) -> None:
        self.routing = routing  # core/routing.Routing: the adapter of each sample or token, or None
        self.prepared: tuple[str, ...] = ()  # model adapters whose prepare() ran in this call, in order
        self.routed_prepared: list[tuple[type, list[Any]]] = []  # (class, adapters) whose route_prepare() ran
        self.virtual_tokens: dict[int, int] = {}  # id(cache) -> positions written into it by this call's adapters
        self.losses: list[torch.Tensor] = []
        self.observed: tuple[Any, ...] = ()  # the objectives that see this call (core/objectives.py)
        self._scratch: dict[int, dict[str, Any]] = {}

    def scratch(self, owner: object) -> dict[str, Any]:
        """A dict private to `owner` (a model adapter or site) for the length of this call."""
        return self._scratch.setdefault(id(owner), {})

    def note_virtual_tokens(self, cache: Any, n: int) -> None:
        """Record that this call wrote `n` key/value positions into `cache` ahead of its tokens."""
        self.virtual_tokens[id(cache)] = self.virtual_tokens.get(id(cache), 0) + n

    def virtual_in(self, cache: Any) -> int:
        return self.virtual_tokens.get(id(cache), 0)


def current_call() -> CallContext | None:
    """The context of the innermost call running in this thread (None outside calls, or when that call needs none)."""
    stack = getattr(_LOCAL, "stack", None)
    return stack[-1] if stack else None


def enter_call(call: CallContext | None) -> None:
    """Push the entry of a call that starts (None for a call that needs no context); `exit_call` pops it."""
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
    stack.append(call)


def exit_call() -> None:
    stack = getattr(_LOCAL, "stack", None)
    if stack:
        stack.pop()


def keep_losses(owner: object, losses: list[torch.Tensor]) -> None:
    """Remember the loss terms `owner`'s last call collected in this thread."""
    kept = getattr(_LOCAL, "losses", None)
    if kept is None:
        kept = _LOCAL.losses = {}
    kept[id(owner)] = losses


def kept_losses(owner: object) -> list[torch.Tensor]:
    return getattr(_LOCAL, "losses", {}).get(id(owner), [])


def pending() -> dict[str, Any]:
    """Per-thread values set by `AdaptedModel.forward` / `generate` for the base-model calls they make (routing)."""
    values = getattr(_LOCAL, "pending", None)
    if values is None:
        values = _LOCAL.pending = {}
    return values
