"""A trainable copy of a whole module: how `modules_to_save` heads and full fine-tuning are trained.

y = copy(x), where copy starts equal to the base module. The base stays untouched, so disabling the adapter gives
the base output exactly; merging copies the trained values into the base (the originals are kept to unmerge).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from peftlab.core.layer import BaseCall
from peftlab.core.sites import SelectionSite


class CopySite(SelectionSite):
    """Runs a trainable copy of the base module instead of the base module. Its state keys are the module's own."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.copy = copy.deepcopy(module)
        for param in self.copy.parameters():
            param.requires_grad_(True)
        self._originals: dict[str, torch.Tensor] | None = None

    def forward(self, x: Any, base: BaseCall) -> Any:
        return self.copy(x, *base.args, **base.kwargs)

    def merge(self, module: nn.Module) -> None:
        self._originals = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.copy.state_dict())

    def unmerge(self, module: nn.Module) -> None:
        if self._originals is not None:
            module.load_state_dict(self._originals)
            self._originals = None

    # The saved state uses the module's own parameter names ("weight", "dense.bias"), as Hugging Face PEFT does.
    def export_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return self.copy.state_dict()

    def import_state(self, state: dict[str, torch.Tensor], module: nn.Module) -> None:
        self.copy.load_state_dict(state)
