"""VeRA: y = W x + b + Λ_b B Λ_d A dropout(x)
(Kopiczko et al., 2024, "VeRA: Vector-based Random Matrix Adaptation")

A ∈ R^{r×d_in} and B ∈ R^{d_out×r} are frozen random projections shared by every adapted layer (each layer uses the
top-left slice of one pair sized for the largest layer), regenerated from `projection_prng_key` (Kaiming-uniform, in
Hugging Face PEFT's order: A, then B, from one CPU generator). Only the vectors are trained: Λ_d = diag(d), d ∈ R^r,
starting at d_initial, and Λ_b = diag(b), b ∈ R^{d_out}, starting at zero, so the adapted model starts equal to the
base model. Per layer that is r + d_out parameters, against LoRA's r·(d_in + d_out). Merging folds
ΔW = Λ_b B Λ_d A into W. Sites: nn.Linear and transformers' GPT-2 `Conv1D` (weights stored transposed).
Files: Hugging Face PEFT's VERA layout (vera_lambda_b, vera_lambda_d per layer; the projections as base_model.vera_A
and base_model.vera_B when save_projection is set).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core import attach, routing
from peftlab.core.config import MethodConfig, check, check_range
from peftlab.core.layer import BaseCall
from peftlab.core.sites import ModelAdapter, SiteRole, WeightDeltaSite
from peftlab.core.targets import linear_types, stores_weight_transposed
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.core.view import AdapterView
from peftlab.errors import AdapterLoadError
from peftlab.io.formats import FileFormat
from peftlab.methods.lora import DEFAULT_LORA_TARGETS, linear_shape, routed_dropout


@dataclasses.dataclass(frozen=True, kw_only=True)
class VeRA(MethodConfig):
    """VeRA hyperparameters; the fields of Hugging Face PEFT's VeraConfig.

    r: the projections' rank (choose it higher than a LoRA rank: the trained parameters grow only as r + d_out).
    dropout: on the adapter's input. d_initial: the starting value of d. projection_prng_key: the seed of A and B.
    save_projection: write A and B into the file (else a load regenerates them from the key).
    fan_in_fan_out: kept for Hugging Face PEFT files; the layout is detected from the module type.
    """

    card: ClassVar[MethodCard] = MethodCard(
        id="vera", name="VeRA", kind=AttachKind.WEIGHT_DELTA, inserted_at="attention / feed-forward (linear layers)",
        form="vectors on shared random projections", integration="scaled addition",
        param_formula="r + d_out", mergeable=True, paper="Kopiczko et al. 2024",
        symbols="r: the shared projections' rank; d_out: the layer's output size")
    study_lr: ClassVar[float] = 1e-2
    default_targets: ClassVar = DEFAULT_LORA_TARGETS

    size_fields: ClassVar[tuple[str, ...]] = ("r",)

    r: int = 256
    dropout: float = 0.0
    d_initial: float = 0.1
    projection_prng_key: int = 0
    save_projection: bool = True
    fan_in_fan_out: bool | None = None

    def validate(self) -> None:
        check(self.r >= 1, "r", f"must be >= 1, got {self.r}")
        check_range(self.dropout, "dropout", 0.0, 1.0, high_open=True)

    def supports(self, module: nn.Module) -> bool:
        return isinstance(module, linear_types())

    def build_model_adapter(self, model: nn.Module, sites: dict[str, nn.Module]) -> VeRAProjections:
        sites = self.select_sites(model)
        shapes = [linear_shape(m, stores_weight_transposed(m)) for m in sites.values() if self.supports(m)]
        d_in, d_out = max((s[0] for s in shapes), default=1), max((s[1] for s in shapes), default=1)
        projections = VeRAProjections(self.r, d_in, d_out, self.projection_prng_key, self.save_projection)
        first = next(iter(sites.values()), None)
        return attach.place_like(projections, first) if first is not None else projections

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> VeRALinear:
        assert isinstance(shared, VeRAProjections)
        return VeRALinear(module, shared, self.d_initial, self.dropout, stores_weight_transposed(module))


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-√(6 / fan_in), √(6 / fan_in)) with fan_in = shape[1] (Kaiming uniform, gain √2), drawn from `generator`."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeRAProjections(ModelAdapter):
    """The frozen projections A (r, d_in max) and B (d_out max, r) the adapter's layers share."""

    in_calls = False

    def __init__(self, r: int, d_in: int, d_out: int, key: int, saved: bool) -> None:
        super().__init__()
        generator = torch.Generator(device="cpu").manual_seed(key)
        self.register_buffer("vera_A", kaiming_uniform((r, d_in), generator))
        self.register_buffer("vera_B", kaiming_uniform((d_out, r), generator))
        self.saved = saved

    def export_state(self, base_model: nn.Module) -> dict[str, torch.Tensor]:
        if not self.saved:
            return {}
        return {"base_model.vera_A": self.vera_A, "base_model.vera_B": self.vera_B}

    def import_state(self, state: dict[str, torch.Tensor], base_model: nn.Module) -> None:
        if self.saved:
            self.vera_A.copy_(state["base_model.vera_A"])
            self.vera_B.copy_(state["base_model.vera_B"])


class VeRALinear(WeightDeltaSite):
    """Λ_b and Λ_d of one Linear (or Conv1D) layer: vera_lambda_b (d_out,), vera_lambda_d (r,)."""

    additive = True
    effect_parameters: ClassVar[dict[str, float]] = {"vera_lambda_b": 0.0}  # ΔW is linear in Λ_b

    def __init__(self, module: nn.Module, projections: VeRAProjections, d_initial: float, dropout: float,
                 transposed: bool) -> None:
        super().__init__()
        self.d_in, self.d_out = linear_shape(module, transposed)
        r = projections.vera_A.shape[0]
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.d_out))
        self.vera_lambda_d = nn.Parameter(torch.full((r,), float(d_initial)))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.transposed = transposed
        self._projections = [projections]  # a plain reference: the projections belong to the model adapter

    def projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's slices: A (r, d_in) and B (d_out, r)."""
        shared = self._projections[0]
        return shared.vera_A[:, : self.d_in], shared.vera_B[: self.d_out]

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        result = base(x)
        a, b = self.projections()
        low = F.linear(self.dropout(x.to(a.dtype)), a) * self.vera_lambda_d  # (..., r)
        update = F.linear(low, b) * self.vera_lambda_b  # (..., d_out)
        return result + update.to(result.dtype)

    routable = True

    @classmethod
    def route(cls, sites: list[VeRALinear | None], index: torch.Tensor, x: torch.Tensor, base: BaseCall,
              cache: routing.StackCache) -> torch.Tensor:
        """Each sample's (or token's) own Λ_b B Λ_d A x: LoRA's routed product with A_i = Λ_d A, B_i = Λ_b B."""
        result = base(x)
        shared = [t for s in sites if s is not None for t in s.projections()]
        a, b = cache.get(sites, lambda: (
            routing.stack([s.vera_lambda_d[:, None] * s.projections()[0] if s is not None else None for s in sites]),
            routing.stack([s.vera_lambda_b[:, None] * s.projections()[1] if s is not None else None for s in sites])),
            extra=shared)
        update = routing.low_rank(routed_dropout(sites, x.to(a.dtype)), a, b, index)
        return result + update.to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = Λ_b B Λ_d A in the base weight's layout: (d_out, d_in), or (d_in, d_out) when transposed."""
        a, b = self.projections()
        delta = (self.vera_lambda_b[:, None] * b) @ (self.vera_lambda_d[:, None] * a)  # (d_out, d_in)
        return delta.T if self.transposed else delta

    def merge(self, module: nn.Module) -> None:
        module.weight += self.delta_weight().to(module.weight.dtype)

    def unmerge(self, module: nn.Module) -> None:
        module.weight -= self.delta_weight().to(module.weight.dtype)


class VeraFormat(FileFormat):
    """Hugging Face PEFT's VeraConfig, with the resolved sites."""

    peft_type = "VERA"

    def to_file(self, adapter: AdapterView) -> dict[str, Any]:
        config: VeRA = adapter.config
        transposed = any(stores_weight_transposed(e.module) for e in adapter.entries(SiteRole.METHOD))
        return {"peft_type": "VERA", "task_type": None, "r": config.r, "target_modules": adapter.paths(SiteRole.METHOD),
                "projection_prng_key": config.projection_prng_key, "save_projection": config.save_projection,
                "vera_dropout": config.dropout, "d_initial": config.d_initial,
                "fan_in_fan_out": bool(config.fan_in_fan_out) or transposed, "bias": "none",
                "modules_to_save": adapter.paths(SiteRole.SAVED) or None, "init_weights": True,
                "layers_to_transform": None, "layers_pattern": None, "inference_mode": True}

    def from_file(self, data: Mapping[str, Any]) -> VeRA:
        if data.get("bias", "none") != "none":
            raise AdapterLoadError(f"adapter_config.json sets bias={data['bias']!r}, a VeRA option peftlab does not "
                                   "implement (it trains the base biases, so disabling the adapter would not give the "
                                   "base model); save the adapter with bias='none'")
        targets = data.get("target_modules")
        layers = data.get("layers_to_transform")
        return VeRA(targets=targets if targets is None or isinstance(targets, str) else tuple(targets),
                    r=data.get("r", 256), dropout=data.get("vera_dropout", 0.0),
                    d_initial=data.get("d_initial", 0.1), projection_prng_key=data.get("projection_prng_key", 0),
                    save_projection=data.get("save_projection", True),
                    fan_in_fan_out=bool(data.get("fan_in_fan_out")) or None,
                    layers=(layers,) if isinstance(layers, int) else (tuple(layers) if layers else None),
                    modules_to_save=tuple(data.get("modules_to_save") or ()))


VeRA.site_types = (VeRALinear,)
VeRA.model_adapter_type = VeRAProjections
VeRA.file_format = VeraFormat(VeRA)
