"""A module's own computation with other weights, leaving the module untouched (so concurrent calls are safe).

    with_weights(module, x, W', b') = module's forward on x as if its weight were W' and its bias b'

Linear, transformers' Conv1D, Conv1d/2d/3d and Embedding run their functional form directly. Any other module
(e.g. a Conv2d subclass that pads its input first) goes through torch.func.functional_call, which swaps the
parameters on the module for the length of the call: correct, but two threads running such a site at once would
see each other's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.targets import stores_weight_transposed

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def with_weights(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`module`'s output for x with `weight` and `bias` in place of its own (bias None: no bias)."""
    kind = type(module)
    if kind is nn.Linear:
        return F.linear(x, weight, bias)
    if kind in _CONVS:
        return module._conv_forward(x, weight, bias)  # the module's padding, stride, ...; a pure function of its args
    if kind is nn.Embedding:
        out = F.embedding(x, weight, module.padding_idx, module.max_norm, module.norm_type, module.scale_grad_by_freq,
                          module.sparse)
        return out if bias is None else out + bias
    if stores_weight_transposed(module) and type(module).__name__ == "Conv1D":  # transformers' GPT-2 Conv1D
        out = x @ weight  # (..., d_in) @ (d_in, d_out)
        return out if bias is None else out + bias
    params = {"weight": weight, "bias": bias} if getattr(module, "bias", None) is not None else {"weight": weight}
    return torch.func.functional_call(module, params, (x,))
