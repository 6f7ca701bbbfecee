"""A trainable bias delta at one site: y = base(x) + Δb. Used by BitFit and by LoRA's bias options."""

from __future__ import annotations

import torch
from torch import nn

from peftlab.core.layer import BaseCall

# Modules whose bias is per channel on dim 1 of a (B, C, ...) output; others (Linear, LayerNorm) on the last dim.
CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                 nn.GroupNorm)


def has_bias(module: nn.Module) -> bool:
    bias = getattr(module, "bias", None)
    return isinstance(bias, torch.Tensor) and bias.dim() == 1


class BiasDelta(nn.Module):
    """Adds a trainable Δb to the output's channel dimension (the last one, or dim 1 for convolutions)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.bias_delta = nn.Parameter(torch.zeros_like(module.bias))
        self.channel_dim = 1 if isinstance(module, CHANNEL_FIRST) else -1

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        result = base(x)
        delta = self.bias_delta
        if self.channel_dim == 1:
            delta = delta.view(-1, *([1] * (result.dim() - 2)))  # (C,) -> (C, 1[, 1])
        return result + delta.to(result.dtype)

    def merge(self, module: nn.Module) -> None:
        module.bias += self.bias_delta.to(module.bias.dtype)

    def unmerge(self, module: nn.Module) -> None:
        module.bias -= self.bias_delta.to(module.bias.dtype)
