"""Objectives: loss terms a method contributes beside its structure (KaSA's regulariser is a site's
`regularization_loss`; DEFT's and BA-LoRA's depend on the model's activations and outputs, so they are objects
attached to the model).

An `Objective` is attached with `model.add_objective(name, objective)`. It may
    - `attach(model)`: register forward hooks on the base model's modules (called again whenever adapters are added
      or removed, since wrapping a module replaces it; `detach()` undoes it);
    - `begin(call, kwargs)` / `end(call, output)`: see each training call of the model (calls made with gradients
      enabled), at its start and end, and append loss terms to `call.losses`;
    - `loss(model)`: a term that depends only on parameters.
`model.regularization_loss()` sums the active adapters' own terms, every objective's `loss`, and the terms the
objectives collected during this thread's last call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftlab.core.context import CallContext

if TYPE_CHECKING:
    from peftlab.core.model import AdaptedModel


class Objective(nn.Module):
    """Base of objectives: every hook defaults to doing nothing."""

    def attach(self, model: AdaptedModel) -> None:
        """Register what the objective observes in `model` (forward hooks on its modules)."""

    def detach(self) -> None:
        """Remove what `attach` registered."""

    def begin(self, call: CallContext, kwargs: dict[str, Any]) -> None:
        """A training call starts, with these (already prepared) keyword arguments."""

    def end(self, call: CallContext, output: Any) -> None:
        """A training call ended with `output`; append loss terms to `call.losses`."""

    def loss(self, model: AdaptedModel) -> torch.Tensor | None:
        """A term that depends only on parameters, or None."""
        return None


class HookedObjective(Objective):
    """An objective that keeps the handles of the hooks it registers, so that `detach` removes them."""

    def __init__(self) -> None:
        super().__init__()
        self._handles: list[Any] = []

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
