"""Full fine-tuning: θ' = θ + Δθ for every parameter of the selected modules   (the baseline every PEFT method is
measured against)

A selection method: each selected module is replaced, while the adapter is active, by a trainable copy of itself.
The frozen original stays, so disabling gives the base exactly, several full fine-tunes can coexist, and merging copies
the trained values into the base. The cost of that safety is one extra copy of the selected weights.
By default every module that owns parameters directly is selected, except the output head (which classification
models train through `modules_to_save`). A weight tied between two modules (GPT-2's wte and lm_head) is trained as
a copy at the selected module only, and merging it is refused; exclude it or untie the weights to merge.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn

from peftlab.core.config import MethodConfig
from peftlab.core.copy_site import CopySite
from peftlab.core.typology import AttachKind, MethodCard


def owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


@dataclasses.dataclass(frozen=True, kw_only=True)
class FullFineTuning(MethodConfig):
    """Train every parameter of the selected modules (default: all modules owning parameters, head excluded)."""

    card: ClassVar[MethodCard] = MethodCard(
        id="full", name="Full fine-tuning", kind=AttachKind.SELECTION, inserted_at="every layer",
        form="dense", integration="replacement", param_formula="all parameters of the module", mergeable=True,
        symbols="")
    study_lr: ClassVar[float] = 1e-4
    site_types: ClassVar[tuple] = (CopySite,)

    def supports(self, module: nn.Module) -> bool:
        return owns_parameters(module)

    def select_sites(self, model: nn.Module) -> dict[str, nn.Module]:
        sites = super().select_sites(model)
        # A copy covers the module's whole subtree: drop modules inside another selected module.
        return {p: m for p, m in sites.items() if not any(p.startswith(q + ".") for q in sites)}

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> nn.Module:
        return CopySite(module)
