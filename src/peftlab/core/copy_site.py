"""A trainable copy of a whole module: how `modules_to_save` heads and full fine-tuning are trained.

y = copy(x), where copy starts equal to the base module. The base stays untouched, so disabling the adapter gives
the base output exactly; merging copies the trained values into the base (the originals are kept to unmerge).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from peftlab.core import routing
from peftlab.core.layer import BaseCall
from peftlab.core.sites import SelectionSite
from peftlab.errors import AdapterStateError


class CopySite(SelectionSite):
    """Runs a trainable copy of the base module instead of the base module. Its state keys are the module's own."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.copy = copy.deepcopy(module)
        for param in self.copy.parameters():
            param.requires_grad_(True)
        self._originals: dict[str, torch.Tensor] | None = None
        self.routable = type(module) is nn.Linear  # routed as stacked weights; other module kinds are not

    def forward(self, x: Any, base: BaseCall) -> Any:
        return self.copy(x, *base.args, **base.kwargs)

    @classmethod
    def route(cls, sites: list[CopySite | None], index: torch.Tensor, x: torch.Tensor, base: BaseCall,
              cache: routing.StackCache) -> torch.Tensor:
        """Linear copies (a classification head per adapter): each sample's (or token's) own weights, the base
        module's in the last slot."""
        if index.dim() == 2:
            raise AdapterStateError("a module trained in full (modules_to_save) cannot be routed per token; route "
                                    "per sample (adapter_names)")
        module = base.module
        weights, biases = cache.get(sites, lambda: (
            routing.stack([s.copy.weight if s is not None else module.weight for s in sites], last=module.weight),
            routing.stack([s.copy.bias if s is not None else module.bias for s in sites], last=module.bias)
            if module.bias is not None else None), extra=list(module.parameters()))
        out = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), weights[index].transpose(1, 2))  # (B, L, d_out)
        out = out.view(*x.shape[:-1], -1)  # (B, L, d_out) -> (B, ..., d_out)
        return out if biases is None else out + routing.pick(biases, index, out)

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
