"""LoRA: y = W x + b + (α / r) · B A dropout(x)
(Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models")

A ∈ R^{r×d_in} starts random (Kaiming-uniform), B ∈ R^{d_out×r} starts at zero, so the adapted model starts equal to the
base model. rsLoRA (Kalajdzievski, 2023) scales by α / √r instead. Merging folds ΔW = (α / r) · B A into W.
Sites: nn.Linear, nn.Conv1d, nn.Conv2d (A is a conv with the base kernel, B a 1×1 conv), nn.Embedding (A and B act on
one-hot rows) and transformers' GPT-2 `Conv1D` (weights stored transposed: fan_in_fan_out).
Per-module ranks and alphas come from `rank_pattern` / `alpha_pattern` (regex keys matched on the module name's end).
"""

from __future__ import annotations

import abc
import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core import routing
from peftlab.core.bias_site import has_bias
from peftlab.core.config import MethodConfig, check, check_range
from peftlab.core.functional import with_weights
from peftlab.core.layer import BaseCall
from peftlab.core.sites import LowRankSite, SiteRole, WeightDeltaSite
from peftlab.core.targets import LAYER_CONTAINERS, candidate_modules, is_head, linear_types, stores_weight_transposed
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.core.view import AdapterView
from peftlab.errors import AdapterLoadError, AdapterStateError, ConfigError
from peftlab.io.formats import FileFormat
from peftlab.kernels.lora_linear import lora_linear

INITS = ("default", "gaussian", "random")
BIASES = ("none", "lora_only", "all")
DEFAULT_LORA_TARGETS = ("query", "value", "q_proj", "v_proj", "c_attn", "q_lin", "v_lin", "query_key_value", "Wqkv")


def pattern_value(patterns: dict[str, float], path: str, default: float) -> float:
    """The value of the first pattern whose regex matches the end of `path` (Hugging Face PEFT's rule), else default."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRA(MethodConfig):
    """LoRA hyperparameters.

    r: rank of the update (>= 1). alpha: scale numerator (scaling = alpha / r, or alpha / sqrt(r) with use_rslora).
    dropout: dropout on the adapter's input, in [0, 1). bias: "none", "lora_only" (train the adapted layers' biases)
    or "all" (every bias in the model). init: "default" (A Kaiming, B zero), "gaussian" (A ~ N(0, 1/r), B zero) or
    "random" (B random too; not identity at start, for tests). fan_in_fan_out: kept for Hugging Face PEFT files;
    the layout is detected from the module type (transformers' Conv1D stores (d_in, d_out)).
    """

    card: ClassVar[MethodCard] = MethodCard(
        id="lora", name="LoRA", kind=AttachKind.WEIGHT_DELTA,
        inserted_at="attention / feed-forward (any linear, convolution or embedding)",
        form="low-rank", integration="scaled addition", param_formula="r·(d_in + d_out)", mergeable=True,
        paper="Hu et al. 2021")
    study_lr: ClassVar[float] = 5e-3
    site_types: ClassVar[tuple] = ()  # set below the site classes
    default_targets: ClassVar = DEFAULT_LORA_TARGETS
    size_fields: ClassVar[tuple[str, ...]] = ("r", "rank_pattern")

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    bias: str = "none"
    use_rslora: bool = False
    rank_pattern: dict[str, int] = dataclasses.field(default_factory=dict)
    alpha_pattern: dict[str, float] = dataclasses.field(default_factory=dict)
    init: str = "default"
    fan_in_fan_out: bool | None = None

    def validate(self) -> None:
        check(isinstance(self.r, int) and self.r >= 1, "r", f"must be an integer >= 1, got {self.r!r}")
        check_range(self.alpha, "alpha", 0.0, math.inf, low_open=True)
        check_range(self.dropout, "dropout", 0.0, 1.0, high_open=True)
        check(self.bias in BIASES, "bias", f"must be one of {BIASES}, got {self.bias!r}")
        check(self.init in INITS, "init", f"must be one of {INITS}, got {self.init!r}")
        for key in (*self.rank_pattern, *self.alpha_pattern):
            try:
                re.compile(key)
            except re.error as err:
                raise ConfigError(f"rank_pattern/alpha_pattern key {key!r} is not a valid regular expression: {err}"
                                  ) from None
        for key, rank in self.rank_pattern.items():
            check(isinstance(rank, int) and rank >= 1, "rank_pattern", f"{key!r}: rank must be an int >= 1")
        for key, alpha in self.alpha_pattern.items():
            check_range(alpha, f"alpha_pattern[{key!r}]", 0.0, math.inf, low_open=True)

    def supports(self, module: nn.Module) -> bool:
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return module.groups == 1
        return isinstance(module, (*linear_types(), nn.Embedding))

    def bias_only_sites(self, model: nn.Module, sites: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """bias="all": a bias delta on every other module with a bias (the output head aside), as HF PEFT trains
        every bias in the model; the low-rank update stays on the targets."""
        if self.bias != "all":
            return {}
        return {path: module for path, module in candidate_modules(model)
                if path not in sites and has_bias(module) and not is_head(model, path, module)}

    def rank_and_scaling(self, path: str) -> tuple[int, float]:
        r = int(pattern_value(self.rank_pattern, path, self.r))
        alpha = pattern_value(self.alpha_pattern, path, self.alpha)
        return r, alpha / (math.sqrt(r) if self.use_rslora else r)

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> nn.Module:
        r, scaling = self.rank_and_scaling(path)
        train_bias = self.bias != "none" and has_bias(module)
        if isinstance(module, nn.Embedding):
            return LoRAEmbedding(module, r, scaling, self.init)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return LoRAConv(module, r, scaling, self.dropout, self.init, train_bias)
        return LoRALinear(module, r, scaling, self.dropout, self.init, stores_weight_transposed(module), train_bias)


def linear_shape(module: nn.Module, transposed: bool) -> tuple[int, int]:
    """(d_in, d_out) of a Linear-like module."""
    weight = module.weight
    return (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])


def init_pair(a: torch.Tensor, b: torch.Tensor, init: str, r: int) -> None:
    """Initialise LoRA's A and B in place."""
    with torch.no_grad():
        if init == "gaussian":
            nn.init.normal_(a, std=1.0 / r)
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        if init == "random":
            nn.init.kaiming_uniform_(b, a=math.sqrt(5))
        else:
            nn.init.zeros_(b)


class LoRAUpdate(WeightDeltaSite):
    """What LoRA's and DoRA's sites share: merging ΔW (and the optional bias delta) into the base, and the file
    layout of the trained bias (bias="lora_only"/"all"): files store the absolute bias under "base_layer.bias", as
    Hugging Face PEFT does; we keep the delta so that disabling the adapter restores the base bias exactly.
    The classes that are exactly ΔW = scaling · B A (LoRA's, not DoRA's) are also LowRankSites."""

    # ΔW is linear in B: B -> -B negates it
    effect_parameters: ClassVar[dict[str, float]] = {"lora_B.weight": 0.0, "bias_delta": 0.0}

    @abc.abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """ΔW in the base weight's own layout."""

    def _init_bias(self, module: nn.Module, train_bias: bool) -> None:
        self.bias_delta = nn.Parameter(torch.zeros_like(module.bias)) if train_bias else None

    def trained_bias(self) -> nn.Parameter | None:
        return self.bias_delta

    def export_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in self.state_dict().items() if k != "bias_delta"}
        if self.bias_delta is not None:
            state["base_layer.bias"] = (module.bias + self.bias_delta).detach()
        return state

    def import_state(self, state: dict[str, torch.Tensor], module: nn.Module) -> None:
        state = dict(state)
        bias = state.pop("base_layer.bias", None)
        if bias is not None and self.bias_delta is not None:
            state["bias_delta"] = bias.to(module.bias) - module.bias.detach()
        self.load_state_dict(state)

    def merge(self, module: nn.Module) -> None:
        module.weight += self.delta_weight().to(module.weight.dtype)
        if self.bias_delta is not None:
            module.bias += self.bias_delta.to(module.bias.dtype)

    def unmerge(self, module: nn.Module) -> None:
        module.weight -= self.delta_weight().to(module.weight.dtype)
        if self.bias_delta is not None:
            module.bias -= self.bias_delta.to(module.bias.dtype)


class LoRALinearUpdate(LoRAUpdate):
    """The low-rank update at a Linear (or transposed Conv1D) layer. State: lora_A.weight (r, d_in), lora_B.weight
    (d_out, r)."""

    def __init__(self, module: nn.Module, r: int, scaling: float, dropout: float, init: str, transposed: bool,
                 train_bias: bool) -> None:
        super().__init__()
        d_in, d_out = linear_shape(module, transposed)
        self.lora_A = nn.Linear(d_in, r, bias=False)
        self.lora_B = nn.Linear(r, d_out, bias=False)
        init_pair(self.lora_A.weight, self.lora_B.weight, init, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = scaling
        self.transposed = transposed
        self.fused = True  # the fused kernel (kernels/lora_linear.py); False forces the readable path
        self._init_bias(module, train_bias)

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        if self.fused and self._can_fuse(x, base):
            module = base.module
            p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
            return lora_linear(x, module.weight, module.bias, self.lora_A.weight, self.lora_B.weight, self.scaling,
                               p, self.training)
        result = base(x)
        a = self.lora_A.weight
        update = F.linear(F.linear(self.dropout(x.to(a.dtype)), a), self.lora_B.weight) * self.scaling
        if self.bias_delta is not None:
            update = update + self.bias_delta
        return result + update.to(result.dtype)

    def _can_fuse(self, x: torch.Tensor, base: BaseCall) -> bool:
        """The fused kernel covers a bare, frozen nn.Linear with adapter and input in the base's dtype."""
        module = base.module
        return (base.is_plain and type(module) is nn.Linear and self.bias_delta is None
                and not module.weight.requires_grad and (module.bias is None or not module.bias.requires_grad)
                and x.dtype == module.weight.dtype == self.lora_A.weight.dtype
                and not torch.is_autocast_enabled(x.device.type))

    def factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(A, B): ΔW = scaling · B A."""
        return self.lora_A.weight, self.lora_B.weight

    def delta_weight(self) -> torch.Tensor:
        """ΔW in the base weight's layout: (d_out, d_in), or (d_in, d_out) when transposed."""
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (d_out, d_in)
        return delta.T if self.transposed else delta


class LoRALinear(LoRALinearUpdate, LowRankSite):
    """LoRA at a Linear (or transposed Conv1D) layer."""

    routable = True

    @classmethod
    def route(cls, sites: list[LoRALinear | None], index: torch.Tensor, x: torch.Tensor, base: BaseCall,
              cache: routing.StackCache) -> torch.Tensor:
        """Each sample's (or token's) own B A x, from the stacked factors (core/routing.py)."""
        result = base(x)
        a, b, bias = cache.get(sites, lambda: stacked_factors(sites))
        update = routing.low_rank(routed_dropout(sites, x.to(a.dtype)), a, b, index)
        if bias is not None:
            update = update + routing.pick(bias, index, update)
        return result + update.to(result.dtype)


def stacked_factors(sites: list[LoRALinearUpdate | None]) -> tuple[torch.Tensor, torch.Tensor,
                                                                   torch.Tensor | None]:
    """(A (n + 1, r, d_in), s·B (n + 1, d_out, r), Δb (n + 1, d_out) or None), zero-padded to the largest rank."""
    a = routing.stack([s.lora_A.weight if s is not None else None for s in sites])
    b = routing.stack([s.lora_B.weight * s.scaling if s is not None else None for s in sites])
    biases = [s.bias_delta if s is not None else None for s in sites]
    bias = routing.stack(biases) if any(v is not None for v in biases) else None
    return a, b, bias


def routed_dropout(sites: list[nn.Module | None], x: torch.Tensor) -> torch.Tensor:
    """The adapters' input dropout for a routed call: one mask for the batch, so the adapters must share a rate."""
    rates = {s.dropout.p if isinstance(s.dropout, nn.Dropout) else 0.0 for s in sites if s is not None}
    training = any(s.training for s in sites if s is not None)
    if not training or rates == {0.0}:
        return x
    if len(rates) > 1:
        raise AdapterStateError(f"adapters with dropout rates {sorted(rates)} cannot be trained in one routed batch; "
                                "give them one rate, or train them in batches of their own")
    return F.dropout(x, rates.pop(), training=True)


class LoRAConvUpdate(LoRAUpdate):
    """The low-rank update at a Conv1d/Conv2d: A is a conv (d_in -> r) with the base kernel, stride and padding; B a
    1×1 conv (r -> d_out)."""

    def __init__(self, module: nn.Conv1d | nn.Conv2d, r: int, scaling: float, dropout: float, init: str,
                 train_bias: bool) -> None:
        super().__init__()
        conv = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Conv1d
        self.lora_A = conv(module.in_channels, r, module.kernel_size, module.stride, module.padding,
                           module.dilation, bias=False, padding_mode=module.padding_mode)
        self.lora_B = conv(r, module.out_channels, 1, 1, bias=False)
        # A subclass (e.g. TensorFlow-style "same" padding) may transform its input before the convolution: run the
        # update through the module's own forward with ΔW instead of the two small convs (exact, costs one conv).
        self.plain_conv = type(module) in (nn.Conv1d, nn.Conv2d)
        init_pair(self.lora_A.weight, self.lora_B.weight, init, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = scaling
        self._init_bias(module, train_bias)

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        result = base(x)
        x = self.dropout(x.to(self.lora_A.weight.dtype))
        update = self.low_rank(base.module, x)
        if self.bias_delta is not None:
            update = update + self.bias_delta.view(-1, *([1] * (update.dim() - 2)))  # (C,) -> (C, 1[, 1])
        return result + update.to(result.dtype)

    def low_rank(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """c · B * (A * x): the two small convolutions, or the module's own with ΔW for a subclass."""
        if self.plain_conv:
            return self.lora_B(self.lora_A(x)) * self.scaling
        return self.convolve(module, x, self.delta_weight())

    @staticmethod
    def convolve(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The module's own convolution of x with `weight` and no bias (a subclass's padding rules included)."""
        return with_weights(module, x, weight, None)

    def delta_weight(self) -> torch.Tensor:
        b = self.lora_B.weight.flatten(1)  # (d_out, r, 1[, 1]) -> (d_out, r)
        return torch.tensordot(b, self.lora_A.weight, dims=1) * self.scaling  # (d_out, d_in, k[, k])

    factors = LoRALinearUpdate.factors


class LoRAConv(LoRAConvUpdate, LowRankSite):
    """LoRA at a Conv1d/Conv2d."""


class LoRAEmbedding(LoRAUpdate, LowRankSite):
    """LoRA at an Embedding: row i of ΔW is (α/r)·(B A)[:, i]. State: lora_embedding_A (r, V), lora_embedding_B (D, r).

    As in Hugging Face PEFT, A starts at zero and B random (the one-hot input makes Kaiming on A meaningless).
    """

    def __init__(self, module: nn.Embedding, r: int, scaling: float, init: str) -> None:
        super().__init__()
        self._init_bias(module, train_bias=False)
        self.lora_embedding_A = nn.Parameter(torch.zeros(r, module.num_embeddings))
        self.lora_embedding_B = nn.Parameter(torch.empty(module.embedding_dim, r))
        with torch.no_grad():
            nn.init.normal_(self.lora_embedding_B)
            if init == "random":
                nn.init.normal_(self.lora_embedding_A)
        self.scaling = scaling

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        result = base(x)
        emb = base.module
        rows = F.embedding(x, self.lora_embedding_A.T, emb.padding_idx, emb.max_norm, emb.norm_type,
                           emb.scale_grad_by_freq, emb.sparse)  # (..., r)
        return result + ((rows @ self.lora_embedding_B.T) * self.scaling).to(result.dtype)

    routable = True
    effect_parameters: ClassVar[dict[str, float]] = {"lora_embedding_B": 0.0}

    @classmethod
    def route(cls, sites: list[LoRAEmbedding | None], index: torch.Tensor, x: torch.Tensor, base: BaseCall,
              cache: routing.StackCache) -> torch.Tensor:
        """Each sample's (or token's) own rows of Aᵀ, then its B: the (n + 1, V, r) stack is gathered at the
        tokens, never expanded per sample."""
        result = base(x)
        a, b = cache.get(sites, lambda: (
            routing.stack([s.lora_embedding_A.T if s is not None else None for s in sites]),  # (V, r) each
            routing.stack([s.lora_embedding_B * s.scaling if s is not None else None for s in sites])))  # (D, r)
        tokens = index if index.dim() == 2 else index.view(-1, *([1] * (x.dim() - 1))).expand_as(x)
        rows = a[tokens, x]  # (B, T, r): token t of sample i takes row x[i, t] of its adapter's Aᵀ
        if index.dim() == 2:
            n = len(sites)
            spread = rows.reshape(-1, 1, rows.shape[-1]) * routing.token_mask(index, n).unsqueeze(-1)  # (N, n, r)
            b_all = b[:n].permute(1, 0, 2).reshape(b.shape[1], -1)  # (n, D, r) -> (D, n·r)
            update = (spread.reshape(rows.shape[0] * rows.shape[1], -1) @ b_all.T).view(*x.shape, -1)
        else:
            update = torch.bmm(rows.reshape(x.shape[0], -1, rows.shape[-1]), b[index].transpose(1, 2))
            update = update.view(*x.shape, -1)  # (B, T, D)
        return result + update.to(result.dtype)

    def factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(A (r, V), B (D, r)): ΔWᵀ = scaling · B A."""
        return self.lora_embedding_A, self.lora_embedding_B

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_embedding_B @ self.lora_embedding_A).T * self.scaling  # (V, D)


LoRA.site_types = (LoRALinear, LoRAConv, LoRAEmbedding)


# --- Hugging Face PEFT's adapter_config.json ----------------------------------------------------------------------
# Initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ): their files only fit the changed base.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")
_HF_UNSUPPORTED = ("lora_bias", "use_qalora", "target_parameters", "trainable_token_indices", "layer_replication",
                   "megatron_config", "use_bdlora", "alora_invocation_tokens", "arrow_config",
                   "monteclora_config", "velora_config")
# The LoraConfig fields that mark a LoRA variant's files; each variant's format claims the files its field marks.
VARIANT_FIELDS = ("use_dora", "kasa_config")


def _is_set(value: Any) -> bool:
    return value not in (None, False, {}, [], ())


class LoraFormat(FileFormat):
    """Hugging Face PEFT's LoraConfig, for LoRA and its variants. `variant` is the LoraConfig field that marks the
    variant's files (DoRA: use_dora, KaSA: kasa_config); plain LoRA files set none of VARIANT_FIELDS.

    rank_pattern and alpha_pattern are written resolved, one escaped full module path per site that differs from r
    and alpha: the JSON file's keys are sorted, and a sorted pattern list could change which pattern matches first.
    """

    peft_type = "LORA"

    def __init__(self, config_cls: type[LoRA], variant: str | None = None) -> None:
        super().__init__(config_cls)
        self.variant = variant

    def claims(self, data: Mapping[str, Any]) -> bool:
        return [f for f in VARIANT_FIELDS if _is_set(data.get(f))] == ([self.variant] if self.variant else [])

    def variant_to_file(self, config: LoRA) -> dict[str, Any]:
        """The variant's own LoraConfig fields (default: its marker set to True)."""
        return {self.variant: True} if self.variant else {}

    def variant_from_file(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The variant's own config fields read from the file (default: none)."""
        return {}

    def to_file(self, adapter: AdapterView) -> dict[str, Any]:
        config: LoRA = adapter.config
        sites = adapter.paths(SiteRole.METHOD)
        init = {"default": True, "gaussian": "gaussian", "random": False}[config.init]
        ranks = {re.escape(p): r for p in sites
                 if (r := int(pattern_value(config.rank_pattern, p, config.r))) != config.r}
        alphas = {re.escape(p): a for p in sites
                  if (a := pattern_value(config.alpha_pattern, p, config.alpha)) != config.alpha}
        transposed = any(stores_weight_transposed(e.module) for e in adapter.entries(SiteRole.METHOD))
        return {
            "peft_type": "LORA", "task_type": None, "r": config.r, "lora_alpha": config.alpha,
            "lora_dropout": config.dropout, "bias": config.bias, "use_rslora": config.use_rslora,
            "use_dora": False, "target_modules": sites, "modules_to_save": adapter.paths(SiteRole.SAVED) or None,
            "rank_pattern": ranks, "alpha_pattern": alphas,
            "fan_in_fan_out": bool(config.fan_in_fan_out) or transposed, "init_lora_weights": init,
            "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None, "inference_mode": True,
            **self.variant_to_file(config),
        }

    def from_file(self, data: Mapping[str, Any]) -> LoRA:
        for key in _HF_UNSUPPORTED:
            if _is_set(data.get(key)):
                raise AdapterLoadError(f"adapter_config.json sets {key}={data[key]!r}, a LoRA option peftlab does not "
                                       "implement; save the adapter without it")
        init = data.get("init_lora_weights", True)
        if isinstance(init, str) and init.startswith(_BASE_CHANGING_INITS):
            raise AdapterLoadError(
                f"adapter_config.json sets init_lora_weights={init!r}: such an adapter changed the base weights when "
                "it was built, so it only fits that changed base. Convert it to a plain LoRA first (Hugging Face "
                "PEFT: save_pretrained(..., path_initial_model_for_weight_conversion=...)), then load the converted "
                "folder")
        pattern = data.get("layers_pattern")
        patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
        if data.get("layers_to_transform") is not None and any(p not in LAYER_CONTAINERS for p in patterns):
            raise AdapterLoadError(f"adapter_config.json sets layers_pattern={pattern!r}; peftlab reads layer "
                                   f"indices after {', '.join(LAYER_CONTAINERS)} only. Save the adapter with its "
                                   "targets as full module names instead of layers_to_transform")
        targets = data.get("target_modules")
        if targets is not None and not isinstance(targets, str):
            targets = tuple(targets)  # a string is a regex (full match) or "all-linear": the same semantics
        layers = data.get("layers_to_transform")
        excluded = data.get("exclude_modules")
        fields = dict(
            targets=targets, r=data.get("r", 8), alpha=data.get("lora_alpha", 8.0),  # types: checked by the config
            dropout=data.get("lora_dropout", 0.0), bias=data.get("bias", "none"),
            use_rslora=bool(data.get("use_rslora", False)), rank_pattern=data.get("rank_pattern") or {},
            alpha_pattern=data.get("alpha_pattern") or {},
            fan_in_fan_out=bool(data.get("fan_in_fan_out")) or None,
            init={"gaussian": "gaussian", False: "random"}.get(init, "default"),
            modules_to_save=tuple(data["modules_to_save"]) if data.get("modules_to_save") else (),
            layers=(layers,) if isinstance(layers, int) else (tuple(layers) if layers else None),
            exclude=tuple(excluded) if isinstance(excluded, list) else excluded,
        )
        return self.config_cls(**fields, **self.variant_from_file(data))


LoRA.file_format = LoraFormat(LoRA)
