"""KaSA: y = (W − U_r Σ_r V_rᵀ) x + b + s · B diag(ΔΣ) A dropout(x)
(Wang et al., 2024, "KaSA: Knowledge-Aware Singular-Value Adaptation of Large Language Models")

W = U Σ Vᵀ; U_r Σ_r V_rᵀ is its part along the r smallest singular values ("noise"), dropped from the frozen base.
The update is LoRA's with a trained diagonal of singular values ΔΣ ∈ R^r between A and B (s = α / r, or α / √r with
rsLoRA); B starts at zero, ΔΣ ~ N(0, 1), so the adapted model starts equal to the truncated base. Training adds
the paper's regulariser (Eq. 9-11, `regularization_loss`):
    β ‖ΔΣ‖² + γ (‖BᵀB − I‖_F + ‖A Aᵀ − I‖_F)   summed over the adapted layers.
Unlike Hugging Face PEFT, which overwrites W with its truncation, the base weights are not touched: each site keeps
the dropped part as two frozen factors (U_r Σ_r: (d_out, r), V_rᵀ: (r, d_in); not saved, recomputed from W) and
subtracts it, so disabling the adapter gives the base model exactly, and KaSA mixes with other adapters. Merging
folds −U_r Σ_r V_rᵀ + s · B diag(ΔΣ) A into W. Sites: nn.Linear. Files: Hugging Face PEFT's LoRA files with
`kasa_config` {beta, gamma}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.bias_site import has_bias
from peftlab.core.config import check_range
from peftlab.core.layer import BaseCall
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.errors import ConfigError, TargetError
from peftlab.methods.lora import LoRA, LoraFormat, LoRALinearUpdate


@dataclasses.dataclass(frozen=True, kw_only=True)
class KaSA(LoRA):
    """KaSA: LoRA's hyperparameters, plus the regulariser's weights beta (on ‖ΔΣ‖²) and gamma (on the factors'
    orthogonality). nn.Linear sites; r must stay below each layer's min(d_in, d_out)."""

    card: ClassVar[MethodCard] = MethodCard(
        id="kasa", name="KaSA", kind=AttachKind.WEIGHT_DELTA,
        inserted_at="attention / feed-forward (linear layers)",
        form="low-rank + singular values (SVD-truncated base)", integration="scaled addition",
        param_formula="r·(d_in + d_out) + r", mergeable=True, paper="Wang et al. 2024")
    study_lr: ClassVar[float] = 5e-3

    beta: float = 1e-4
    gamma: float = 1e-3

    def validate(self) -> None:
        super().validate()
        check_range(self.beta, "beta", 0.0, float("inf"))
        check_range(self.gamma, "gamma", 0.0, float("inf"))

    def supports(self, module: nn.Module) -> bool:
        return type(module) is nn.Linear

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> KaSALinear:
        r, scaling = self.rank_and_scaling(path)
        if r >= min(module.in_features, module.out_features):
            raise ConfigError(f"kasa: r={r} at {path!r} must be below min(d_in, d_out) = "
                              f"{min(module.in_features, module.out_features)}, so that the truncated base keeps "
                              "at least one singular direction; lower r (or rank_pattern for that layer)")
        train_bias = self.bias != "none" and has_bias(module)
        return KaSALinear(module, r, scaling, self.dropout, self.init, train_bias, self.beta, self.gamma)


def smallest_components(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The part of W (d_out, d_in) along its r smallest singular values, as factors U_r Σ_r (d_out, r) and
    V_rᵀ (r, d_in), computed in float32."""
    if weight.device.type == "meta":
        raise TargetError("KaSA truncates the base weights by SVD when it is added, so they must be loaded: adapt the "
                          "model after its weights are on a real device")
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)  # (d_out, k), (k,), (k, d_in)
    keep = s.numel() - r
    return u[:, keep:] * s[keep:], vh[keep:]


class KaSALinear(LoRALinearUpdate):
    """KaSA at a Linear layer. State: lora_A.weight (r, d_in), lora_B.weight (d_out, r), lora_diag (r,); frozen
    buffers (not saved): the dropped part's factors."""

    additive = True  # base(x) plus a term that does not read base(x): folds in any order with other additive sites
    effect_parameters: ClassVar[dict[str, float]] = {"lora_B.weight": 0.0, "bias_delta": 0.0}  # linear in B

    def __init__(self, module: nn.Linear, r: int, scaling: float, dropout: float, init: str, train_bias: bool,
                 beta: float, gamma: float) -> None:
        super().__init__(module, r, scaling, dropout, init, transposed=False, train_bias=train_bias)
        self.lora_diag = nn.Parameter(torch.randn(r))
        dropped_us, dropped_vh = smallest_components(module.weight, r)
        self.register_buffer("dropped_us", dropped_us, persistent=False)
        self.register_buffer("dropped_vh", dropped_vh, persistent=False)
        self.beta, self.gamma = beta, gamma

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        result = base(x)
        a = self.lora_A.weight
        x = x.to(a.dtype)
        dropped = F.linear(F.linear(x, self.dropped_vh.to(a.dtype)), self.dropped_us.to(a.dtype))  # (..., d_out)
        low = F.linear(self.dropout(x), a) * self.lora_diag  # (..., r)
        update = F.linear(low, self.lora_B.weight) * self.scaling - dropped
        if self.bias_delta is not None:
            update = update + self.bias_delta
        return result + update.to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The total change of W: s · B diag(ΔΣ) A − U_r Σ_r V_rᵀ, (d_out, d_in)."""
        update = (self.lora_B.weight * self.lora_diag) @ self.lora_A.weight * self.scaling  # (d_out, r)(r, d_in)
        return update - (self.dropped_us @ self.dropped_vh).to(update.dtype)

    def regularization_loss(self) -> torch.Tensor:
        """β ‖ΔΣ‖² + γ (‖BᵀB − I‖_F + ‖A Aᵀ − I‖_F), in float32."""
        a, b, diag = self.lora_A.weight.float(), self.lora_B.weight.float(), self.lora_diag.float()
        eye = torch.eye(diag.numel(), device=diag.device)
        orthogonality = torch.linalg.norm(b.T @ b - eye) + torch.linalg.norm(a @ a.T - eye)  # (r, r) Gram matrices
        return self.beta * diag.pow(2).sum() + self.gamma * orthogonality


class KasaFormat(LoraFormat):
    """Hugging Face PEFT's LoraConfig with kasa_config = {beta, gamma}."""

    def variant_to_file(self, config: KaSA) -> dict[str, Any]:
        return {"kasa_config": {"beta": config.beta, "gamma": config.gamma}}

    def variant_from_file(self, data: Mapping[str, Any]) -> dict[str, Any]:
        kasa = data["kasa_config"]
        if not isinstance(kasa, Mapping):
            raise ConfigError(f"kasa_config must be an object with beta and gamma, got {kasa!r}")
        return {"beta": kasa.get("beta", 1e-4), "gamma": kasa.get("gamma", 1e-3)}


KaSA.site_types = (KaSALinear,)
KaSA.file_format = KasaFormat(KaSA, variant="kasa_config")
