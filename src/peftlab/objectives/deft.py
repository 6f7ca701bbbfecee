"""DEFT: L_DEFT = λ · (1/L) Σ_ℓ mean_{t, j} tanh(β · max(a_ℓ,t,j − τ, 0)²)
(Runwal et al., 2024, "From PEFT to DEFT: Parameter Efficient Finetuning for Reducing Activation Density in
Transformers")

a_ℓ are the intermediate activations of feed-forward sublayer ℓ (the input of its output projection: BERT's
output.dense, Llama's down_proj, GPT-2's mlp.c_proj), t the real tokens (the attention mask's ones), j the units.
The activation density of a sublayer is the fraction of its activations above τ (τ = 0: the non-zero ones after a
ReLU, the positive ones after GELU or SiLU); tanh(β · max(a − τ, 0)²) is a differentiable stand-in for that count
(0 at or below τ, near 1 well above it; β sets how sharp), so the mean is a smooth density and L_DEFT pushes it down.
Usable with any PEFT method: only the method's parameters receive its gradient. `activation_density` measures the
density itself on held-out batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftlab.core.config import TargetSpec
from peftlab.core.context import CallContext, current_call
from peftlab.core.objectives import HookedObjective
from peftlab.core.targets import FEEDFORWARD_OUTPUTS, candidate_modules, name_matches
from peftlab.errors import ConfigError, TargetError

if TYPE_CHECKING:
    from peftlab.core.model import AdaptedModel


class DEFT(HookedObjective):
    """The density loss. weight: λ. sharpness: β. threshold: τ. targets: the feed-forward output projections whose
    input is the intermediate activation (default: by architecture, FEEDFORWARD_OUTPUTS)."""

    def __init__(self, weight: float = 0.1, sharpness: float = 1.0, threshold: float = 0.0,
                 targets: TargetSpec = FEEDFORWARD_OUTPUTS) -> None:
        super().__init__()
        for name, value in (("weight", weight), ("sharpness", sharpness), ("threshold", threshold)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"DEFT {name}={value!r} must be a finite number")
        if weight < 0 or sharpness <= 0:
            raise ConfigError(f"DEFT needs weight >= 0 and sharpness > 0, got weight={weight}, sharpness={sharpness}")
        self.weight, self.sharpness, self.threshold, self.targets = float(weight), float(sharpness), threshold, targets
        self._layers = 0

    def attach(self, model: AdaptedModel) -> None:
        self.detach()
        modules = feedforward_outputs(model.get_base_model(), self.targets)
        self._layers = len(modules)
        self._handles = [module.register_forward_pre_hook(self._observe) for module in modules.values()]

    def begin(self, call: CallContext, kwargs: dict[str, Any]) -> None:
        call.scratch(self)["mask"] = real_tokens(kwargs)

    def _observe(self, module: nn.Module, args: tuple) -> None:
        call = current_call()
        if call is None or not torch.is_grad_enabled() or "mask" not in call.scratch(self):
            return
        proxy = torch.tanh(self.sharpness * (args[0].float() - self.threshold).clamp(min=0).pow(2))
        term = masked_mean(proxy, call.scratch(self)["mask"])
        call.losses.append(self.weight * term / self._layers)

    def proxy_loss(self, activations: list[torch.Tensor]) -> torch.Tensor:
        """L_DEFT for given intermediate activations (one (B, T, d) tensor per sublayer, every token real)."""
        terms = [torch.tanh(self.sharpness * (a.float() - self.threshold).clamp(min=0).pow(2)).mean()
                 for a in activations]
        return self.weight * torch.stack(terms).mean()


def feedforward_outputs(model: nn.Module, targets: TargetSpec = FEEDFORWARD_OUTPUTS) -> dict[str, nn.Module]:
    """The modules (as placed now: an adapter's wrapper or the module itself) whose input is a feed-forward
    sublayer's intermediate activation."""
    found = {name: model.get_submodule(name) for name, _ in candidate_modules(model) if name_matches(name, targets)}
    if not found:
        raise TargetError(f"no feed-forward output projection matches {targets!r} in {type(model).__name__}; pass "
                          "targets naming the modules whose input is the feed-forward activation (e.g. "
                          "['mlp.down_proj'])")
    return found


def real_tokens(kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    """The call's (B, T) attention mask as booleans, or None when every position is real."""
    mask = kwargs.get("attention_mask")
    return mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of (B, T, d) values over the positions `mask` (B, T) marks real (all, when it does not fit)."""
    if mask is None or values.dim() != 3 or tuple(mask.shape) != tuple(values.shape[:2]):
        return values.mean()
    weights = mask.to(values.dtype).unsqueeze(-1)  # (B, T) -> (B, T, 1)
    return (values * weights).sum() / (weights.sum() * values.shape[-1]).clamp(min=1)


@torch.no_grad()
def activation_density(model: nn.Module, batches: Iterable[Mapping[str, Any]], threshold: float = 0.0,
                       targets: TargetSpec = FEEDFORWARD_OUTPUTS) -> float:
    """The fraction of feed-forward intermediate activations above `threshold`, over the real tokens of `batches`
    (dicts of model inputs), averaged over sublayers: what DEFT lowers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = feedforward_outputs(base, targets)
    counts = torch.zeros(2, dtype=torch.float64)  # (activations above threshold, activations), real tokens only
    mask: list[torch.Tensor | None] = [None]

    def count(module: nn.Module, args: tuple) -> None:
        above = (args[0] > threshold).to(torch.float64)  # (B, T, d)
        real = mask[0]
        if real is not None and above.dim() == 3 and tuple(real.shape) == tuple(above.shape[:2]):
            above = above * real.unsqueeze(-1)  # (B, T) -> (B, T, 1)
            counts[1] += real.sum().item() * above.shape[-1]
        else:
            counts[1] += above.numel()
        counts[0] += above.sum().item()

    handles = [m.register_forward_pre_hook(count) for m in modules.values()]
    try:
        for batch in batches:
            mask[0] = real_tokens(batch)
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    if counts[1] == 0:
        raise ValueError("activation_density: no batch reached a feed-forward sublayer; pass at least one batch")
    return float(counts[0] / counts[1])
