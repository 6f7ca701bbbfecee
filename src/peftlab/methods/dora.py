"""DoRA: W' = m · (W + (α/r) B A) / ‖W + (α/r) B A‖_row
(Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation")

The weight is split into a magnitude vector m (one entry per output feature, initialised to ‖W‖_row) and a direction
updated by LoRA. As in the paper (§4.3) and Hugging Face PEFT, the norm is treated as a constant in the backward
pass. The forward never builds W': with s = m / ‖W + ΔW‖ (a vector over outputs),
    y = base(x) + (s − 1) ⊙ (W x') + s ⊙ (α/r) B A x'      with x' = dropout(x),
and W x' reuses the base output (minus its bias) when there is no dropout.
At a Conv1d/Conv2d (groups = 1) the same holds per output channel: the norm runs over each filter (in_channels ×
kernel), W x' is the convolution of x' with W, and the magnitude has Hugging Face PEFT's shape (1, C_out, 1[, 1]).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core import routing
from peftlab.core.bias_site import has_bias
from peftlab.core.layer import BaseCall
from peftlab.core.targets import stores_weight_transposed
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.errors import AdapterStateError
from peftlab.kernels.dora_linear import DoRALinearFunction
from peftlab.kernels.dropout_mask import DropoutMask
from peftlab.methods.lora import LoRA, LoRAConvUpdate, LoraFormat, LoRALinearUpdate, stacked_factors


@dataclasses.dataclass(frozen=True, kw_only=True)
class DoRA(LoRA):
    """DoRA: LoRA's hyperparameters; adds a trainable magnitude per output feature. Linear, Conv1D, Conv1d/Conv2d
    sites."""

    card: ClassVar[MethodCard] = MethodCard(
        id="dora", name="DoRA", kind=AttachKind.WEIGHT_DELTA,
        inserted_at="attention / feed-forward (any linear or convolution)",
        form="low-rank + magnitude vector", integration="rescaled addition", param_formula="r·(d_in + d_out) + d_out",
        mergeable=True, paper="Liu et al. 2024")
    study_lr: ClassVar[float] = 5e-3

    def supports(self, module: nn.Module) -> bool:
        return super().supports(module) and not isinstance(module, nn.Embedding)  # LoRA's sites but embeddings

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> nn.Module:
        r, scaling = self.rank_and_scaling(path)
        train_bias = self.bias != "none" and has_bias(module)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return DoRAConv(module, r, scaling, self.dropout, self.init, train_bias)
        return DoRALinear(module, r, scaling, self.dropout, self.init, stores_weight_transposed(module), train_bias)


class DoRALinear(LoRALinearUpdate):
    """LoRA site plus `lora_magnitude_vector` (d_out,). Merging keeps the norm factor to unmerge exactly."""

    additive = False
    reads_base_weight = True  # the update rescales by ‖W + c B A‖: folding it needs W alone underneath
    effect_parameters: ClassVar = {}  # the magnitude does not negate: DoRA adapters only average

    def __init__(self, module: nn.Module, r: int, scaling: float, dropout: float, init: str, transposed: bool,
                 train_bias: bool) -> None:
        super().__init__(module, r, scaling, dropout, init, transposed, train_bias)
        with torch.no_grad():
            norm = self.weight_norm(module.weight.to(self.lora_A.weight.dtype))
        self.lora_magnitude_vector = nn.Parameter(norm)
        self._merge_factor: torch.Tensor | None = None

    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """‖W + ΔW‖ per output feature, (d_out,), with ΔW detached."""
        w = weight.T if self.transposed else weight  # -> (d_out, d_in)
        delta = (self.lora_B.weight @ self.lora_A.weight).detach() * self.scaling
        return torch.linalg.norm(w + delta, dim=1)

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        if self.fused and self._can_fuse(x, base):
            module = base.module
            p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
            return DoRALinearFunction.apply(x, module.weight, module.bias, self.lora_A.weight, self.lora_B.weight,
                                            self.lora_magnitude_vector, self.scaling,
                                            DropoutMask.for_call(x, p, self.training))
        result = base(x)
        a = self.lora_A.weight
        module = base.module
        weight = module.weight.to(a.dtype)
        scale = self.lora_magnitude_vector / self.weight_norm(weight).detach()  # (d_out,)
        x = x.to(a.dtype)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            plain = result.to(a.dtype)
            if getattr(module, "bias", None) is not None:
                plain = plain - module.bias.to(a.dtype)
        else:
            x = self.dropout(x)
            plain = F.linear(x, weight.T if self.transposed else weight)
        lora = F.linear(F.linear(x, a), self.lora_B.weight) * self.scaling
        update = (scale - 1) * plain + scale * lora
        if self.bias_delta is not None:
            update = update + self.bias_delta
        return result + update.to(result.dtype)

    routable = True

    @classmethod
    def route(cls, sites: list[DoRALinear | None], index: torch.Tensor, x: torch.Tensor, base: BaseCall,
              cache: routing.StackCache) -> torch.Tensor:
        """y = base(x) + (s_i − 1) ⊙ W x + s_i ⊙ c B_i A_i x with each sample's (or token's) own s_i = m_i / ‖W +
        c B_i A_i‖ (1 for the others); all adapters' norms in one batched computation (`stacked_scales`)."""
        live = [s for s in sites if s is not None]
        if any(s.training and isinstance(s.dropout, nn.Dropout) for s in live):
            raise AdapterStateError("DoRA adapters with dropout cannot be trained in one routed batch (the dropped "
                                    "input changes W x); train them with dropout 0, or in batches of their own")
        result = base(x)
        module = base.module
        weight = module.weight.T if live[0].transposed else module.weight  # (d_out, d_in)
        def build() -> tuple[torch.Tensor, ...]:
            a, b, bias = stacked_factors(sites)
            return a, b, bias, stacked_scales(sites, weight.to(a.dtype), a, b)

        a, b, bias, scales = cache.get(sites, build, extra=[module.weight])
        scale = routing.pick(scales, index, result)  # broadcasts against (B, ..., d_out)
        plain = result.to(a.dtype)
        if getattr(module, "bias", None) is not None:
            plain = plain - module.bias.to(a.dtype)
        update = (scale - 1) * plain + scale * routing.low_rank(x.to(a.dtype), a, b, index)
        if bias is not None:
            update = update + routing.pick(bias, index, update)
        return result + update.to(result.dtype)

    def merge_factor(self, weight: torch.Tensor) -> torch.Tensor:
        """m / ‖W + ΔW‖ shaped to scale the base weight's output rows (or columns, when stored transposed)."""
        factor = self.lora_magnitude_vector / self.weight_norm(weight.to(self.lora_A.weight.dtype))  # (d_out,)
        return factor.view(1, -1) if self.transposed else factor.view(-1, 1)  # broadcast over d_in

    def merge(self, module: nn.Module) -> None:
        """W ← m / ‖W + ΔW‖ · (W + ΔW); the factor is kept so that unmerge restores W exactly."""
        weight = module.weight
        factor = self._merge_factor = self.merge_factor(weight)
        weight.copy_((factor * (weight + self.delta_weight())).to(weight.dtype))
        if self.bias_delta is not None:
            module.bias += self.bias_delta.to(module.bias.dtype)

    def unmerge(self, module: nn.Module) -> None:
        if self._merge_factor is None:
            return
        weight = module.weight
        weight.copy_((weight / self._merge_factor - self.delta_weight()).to(weight.dtype))
        self._merge_factor = None
        if self.bias_delta is not None:
            module.bias -= self.bias_delta.to(module.bias.dtype)


class DoRAConv(LoRAConvUpdate):
    """LoRA conv site plus `lora_magnitude_vector` (1, C_out, 1[, 1]), initialised to each filter's norm."""

    additive = False
    reads_base_weight = True
    effect_parameters: ClassVar = {}

    def __init__(self, module: nn.Conv1d | nn.Conv2d, r: int, scaling: float, dropout: float, init: str,
                 train_bias: bool) -> None:
        super().__init__(module, r, scaling, dropout, init, train_bias)
        with torch.no_grad():
            norm = self.weight_norm(module.weight.to(self.lora_A.weight.dtype))  # (C_out,)
        self.lora_magnitude_vector = nn.Parameter(norm.view(1, -1, *([1] * (module.weight.dim() - 2))))
        self._merge_factor: torch.Tensor | None = None

    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """‖W + ΔW‖ per output channel, (C_out,), with ΔW detached: W is (C_out, C_in, k[, k])."""
        return torch.linalg.vector_norm(weight + self.delta_weight().detach(), dim=tuple(range(1, weight.dim())))

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        result = base(x)
        module = base.module
        a = self.lora_A.weight
        weight = module.weight.to(a.dtype)
        channels = (1, -1, *([1] * (result.dim() - 2)))  # (C_out,) broadcast over (B, C_out, L[, W])
        scale = self.lora_magnitude_vector.view(channels) / self.weight_norm(weight).detach().view(channels)
        x = x.to(a.dtype)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            plain = result.to(a.dtype)  # W x + b, the base output
            if module.bias is not None:
                plain = plain - module.bias.to(a.dtype).view(channels)
        else:
            x = self.dropout(x)
            plain = self.convolve(module, x, weight)
        update = (scale - 1) * plain + scale * self.low_rank(module, x)
        if self.bias_delta is not None:
            update = update + self.bias_delta.view(channels)
        return result + update.to(result.dtype)

    def merge_factor(self, weight: torch.Tensor) -> torch.Tensor:
        """m / ‖W + ΔW‖ per output channel, shaped (C_out, 1, 1[, 1]) to scale the base filters."""
        factor = self.lora_magnitude_vector.flatten() / self.weight_norm(weight.to(self.lora_A.weight.dtype))
        return factor.view(-1, *([1] * (weight.dim() - 1)))  # (C_out,) -> broadcast over (C_in, k[, k])

    merge = DoRALinear.merge
    unmerge = DoRALinear.unmerge


DoRA.site_types = (DoRALinear, DoRAConv)
DoRA.file_format = LoraFormat(DoRA, variant="use_dora")


def stacked_scales(sites: list[DoRALinear | None], weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor
                   ) -> torch.Tensor:
    """(n + 1, d_out): m_i / ‖W + c B_i A_i‖ per output row for every adapter at once (ones in the last slot and
    for absent adapters), without forming any W + c B_i A_i:
        ‖W + B A‖²_row = ‖W‖²_row + 2 Σ_k B_jk (W Aᵀ)_jk + B_j (A Aᵀ) B_jᵀ      (B holds the scaling c)
    The norm is detached, as in DoRA's forward."""
    n = len(sites)
    a, b = a[:n].detach(), b[:n].detach()  # (n, r, d_in), (n, d_out, r)
    w_a = torch.einsum("oi,nri->nor", weight, a)  # (n, d_out, r): W Aᵀ per adapter
    gram = a @ a.transpose(1, 2)  # (n, r, r): A Aᵀ
    squared = weight.pow(2).sum(1) + 2 * (b * w_a).sum(-1) + torch.einsum("nor,nrs,nos->no", b, gram, b)
    norms = squared.clamp(min=0).sqrt()  # (n, d_out)
    magnitudes = routing.stack([s.lora_magnitude_vector if s is not None else None for s in sites], 1.0)
    present = torch.tensor([s is not None for s in sites] + [False], device=norms.device).unsqueeze(-1)
    norms = torch.cat([norms, norms.new_ones(1, norms.shape[1])])  # (n + 1, d_out)
    return torch.where(present, magnitudes / norms, torch.ones_like(magnitudes))
