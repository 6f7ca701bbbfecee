"""A trainable bias delta at one site: y = base(x) + Δb. Used by BitFit and by LoRA's bias options."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from peftlab.core import routing
from peftlab.core.layer import BaseCall
from peftlab.core.sites import WeightDeltaSite

# Modules whose bias is per channel on dim 1 of a (B, C, ...) output; others (Linear, LayerNorm) on the last dim.
CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                 nn.GroupNorm)


def has_bias(module: nn.Module) -> bool:
    bias = getattr(module, "bias", None)
    return isinstance(bias, torch.Tensor) and bias.dim() == 1


class BiasDelta(WeightDeltaSite):
    """Adds a trainable Δb to the output's channel dimension (the last one, or dim 1 for convolutions).

    Files hold Δb under "bias_delta", or, with `absolute_in_files`, the absolute bias b + Δb under "bias": how Hugging
    Face PEFT stores the biases that LoRA's bias="all" trains outside the targets.
    """

    additive = True  # y = base(x) + Δb

    def __init__(self, module: nn.Module, absolute_in_files: bool = False) -> None:
        super().__init__()
        self.bias_delta = nn.Parameter(torch.zeros_like(module.bias))
        self.channel_dim = 1 if isinstance(module, CHANNEL_FIRST) else -1
        self.absolute_in_files = absolute_in_files

    def export_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        if self.absolute_in_files:
            return {"bias": (module.bias + self.bias_delta).detach()}
        return {"bias_delta": self.bias_delta.detach()}

    def import_state(self, state: dict[str, torch.Tensor], module: nn.Module) -> None:
        if self.absolute_in_files:
            state = {"bias_delta": state["bias"].to(module.bias) - module.bias.detach()}
        self.load_state_dict(state)

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        result = base(x)
        delta = self.bias_delta
        if self.channel_dim == 1:
            delta = delta.view(-1, *([1] * (result.dim() - 2)))  # (C,) -> (C, 1[, 1])
        return result + delta.to(result.dtype)

    routable = True
    effect_parameters: ClassVar[dict[str, float]] = {"bias_delta": 0.0}

    @classmethod
    def route(cls, sites: list[BiasDelta | None], index: torch.Tensor, x: torch.Tensor, base: BaseCall,
              cache: routing.StackCache) -> torch.Tensor:
        """Each sample's (or token's) own Δb (zero for the others)."""
        result = base(x)
        deltas = cache.get(sites, lambda: routing.stack([s.bias_delta if s is not None else None for s in sites]))
        dim = next(s for s in sites if s is not None).channel_dim
        return result + routing.pick(deltas, index, result, dim).to(result.dtype)

    def merge(self, module: nn.Module) -> None:
        module.bias += self.bias_delta.to(module.bias.dtype)

    def unmerge(self, module: nn.Module) -> None:
        module.bias -= self.bias_delta.to(module.bias.dtype)
