"""BitFit: y = W x + (b + Δb)   (Ben Zaken et al., 2022, "BitFit: Simple Parameter-efficient Fine-tuning")

Only the bias terms change. We train a delta Δb (starting at zero) next to each frozen bias, so disabling the adapter
restores the base exactly and merging is b ← b + Δb. Sites: every module with a bias (Linear, LayerNorm, Conv, ...),
except the output head.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn

from peftlab.core.bias_site import BiasDelta, has_bias
from peftlab.core.config import MethodConfig
from peftlab.core.typology import AttachKind, MethodCard


@dataclasses.dataclass(frozen=True, kw_only=True)
class BitFit(MethodConfig):
    """BitFit: train bias deltas. `targets` None means every module with a bias except the output head."""

    card: ClassVar[MethodCard] = MethodCard(
        id="bitfit", name="BitFit", kind=AttachKind.WEIGHT_DELTA, inserted_at="every layer with a bias",
        form="vector", integration="scaled addition (bias)", param_formula="d_out", mergeable=True,
        paper="Ben Zaken et al. 2022")
    study_lr: ClassVar[float] = 5e-3
    site_types: ClassVar[tuple] = (BiasDelta,)

    def supports(self, module: nn.Module) -> bool:
        return has_bias(module)

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> nn.Module:
        return BiasDelta(module)

