"""AdaLink: e' = e + s · W_up W_down e, on the input embeddings e only
(Wang et al., 2023, "Non-Intrusive Adaptation: Input-Centric Parameter-efficient Fine-Tuning for Versatile
Multimodal Modeling")

A low-rank residual adapter between the embeddings and the first transformer block: W_down ∈ R^{r×d} starts random
(Kaiming-uniform), W_up ∈ R^{d×r} at zero, so the adapted model starts equal to the base model; s = α / r. The
transformer itself is untouched ("non-intrusive"): the only site is the embedding module (by default the model's
token embeddings, `get_input_embeddings()`; name others, e.g. a vision projector's output Linear, in `targets` to
give each modality its own adapter). The map is linear, so it merges into the embedding table:
E' = E (I + s W_up W_down)ᵀ (a Linear site: W' = (I + s W_up W_down) W, b' likewise). Files: peftlab's own layout
(peft_type "ADALINK"; Hugging Face PEFT has no AdaLink).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.config import MethodConfig, check, check_range
from peftlab.core.layer import BaseCall
from peftlab.core.sites import InputSite, MergeableSite
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.errors import TargetError


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaLink(MethodConfig):
    """AdaLink hyperparameters. r: the adapter's rank; alpha: scale numerator (s = alpha / r). targets: None is
    the model's token embedding module; otherwise embedding or Linear modules whose outputs enter the model."""

    card: ClassVar[MethodCard] = MethodCard(
        id="adalink", name="AdaLink", kind=AttachKind.INPUT_SIDE, inserted_at="embeddings (input embeddings only)",
        form="low-rank", integration="scaled addition (residual)", param_formula="2·r·d", mergeable=True,
        paper="Wang et al. 2023", symbols="r: rank, d: the embedding size")
    study_lr: ClassVar[float] = 1e-2
    size_fields: ClassVar[tuple[str, ...]] = ("r",)

    r: int = 8
    alpha: float = 8.0

    def validate(self) -> None:
        check(self.r >= 1, "r", f"must be >= 1, got {self.r}")
        check_range(self.alpha, "alpha", 0.0, math.inf, low_open=True)

    def supports(self, module: nn.Module) -> bool:
        return type(module) in (nn.Embedding, nn.Linear)

    def select_sites(self, model: nn.Module) -> dict[str, nn.Module]:
        if self.targets is not None or self.target_types:
            return super().select_sites(model)
        get = getattr(model, "get_input_embeddings", None)
        embedding = get() if callable(get) else None
        path = next((name for name, module in model.named_modules() if module is embedding), None)
        if path is None:
            raise TargetError(f"adalink adapts the input embeddings, and {type(model).__name__} has none "
                              "(get_input_embeddings()); name the module that produces them in targets=[...]")
        return {path: embedding}

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> AdaLinkSite:
        d = module.embedding_dim if isinstance(module, nn.Embedding) else module.out_features
        return AdaLinkSite(d, self.r, self.alpha / self.r)


class AdaLinkSite(InputSite, MergeableSite):
    """W_down (adalink_down.weight, (r, d)) and W_up (adalink_up.weight, (d, r)) at one embedding module."""

    additive = True
    effect_parameters: ClassVar[dict[str, float]] = {"adalink_up.weight": 0.0}  # the residual update is linear in W_up

    def __init__(self, d: int, r: int, scaling: float) -> None:
        super().__init__()
        self.adalink_down = nn.Linear(d, r, bias=False)
        self.adalink_up = nn.Linear(r, d, bias=False)
        nn.init.kaiming_uniform_(self.adalink_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.adalink_up.weight)
        self.scaling = scaling
        self._originals: dict[str, torch.Tensor] | None = None

    def forward(self, x: Any, base: BaseCall) -> torch.Tensor:
        e = base(x)
        down = self.adalink_down.weight
        update = F.linear(F.linear(e.to(down.dtype), down), self.adalink_up.weight) * self.scaling  # (..., d)
        return e + update.to(e.dtype)

    def transform(self) -> torch.Tensor:
        """M = I + s W_up W_down, (d, d): e' = M e."""
        up, down = self.adalink_up.weight, self.adalink_down.weight
        return torch.eye(up.shape[0], device=up.device, dtype=up.dtype) + self.scaling * (up @ down)

    def merge(self, module: nn.Module) -> None:
        """Embedding: E ← E Mᵀ (each row e ↦ M e); Linear: W ← M W, b ← M b. The originals are kept to unmerge."""
        self._originals = {k: v.detach().clone() for k, v in module.state_dict().items()}
        m = self.transform()
        if isinstance(module, nn.Embedding):
            module.weight.copy_(module.weight @ m.T.to(module.weight.dtype))  # (V, d) @ (d, d)
            return
        module.weight.copy_(m.to(module.weight.dtype) @ module.weight)  # (d, d) @ (d, d_in)
        if module.bias is not None:
            module.bias.copy_(m.to(module.bias.dtype) @ module.bias)

    def unmerge(self, module: nn.Module) -> None:
        if self._originals is not None:
            module.load_state_dict(self._originals)
            self._originals = None


AdaLink.site_types = (AdaLinkSite,)
