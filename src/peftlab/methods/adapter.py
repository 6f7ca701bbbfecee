"""Bottleneck adapter: h ← h + s · up(act(down(h)))   (Houlsby et al., 2019; Pfeiffer et al., 2021; parallel:
AdaptFormer, Chen et al., 2022: h_out = sublayer(x) + s · up(act(down(x))))

down: d → m and up: m → d, with bias; up starts at zero, so the adapted model starts equal to the base model.
Placements, each on the modules that end a sublayer (its output projection, before the residual add):
    houlsby   sequential, after the attention output and the feed-forward output (BERT attention.output.dense and
              output.dense; Llama o_proj and down_proj; GPT-2 attn.c_proj and mlp.c_proj);
    pfeiffer  sequential, after the feed-forward output only;
    parallel  next to the feed-forward sublayer: the adapter reads the sublayer's input and adds to its output.
Parallel needs two points, because no single module of a BERT layer both receives the feed-forward input and returns
its output (its FFN is split across `intermediate` and `output`). The adapter sits at the sublayer's output projection
(`targets`) and reads the input recorded by a tap on the sublayer's first projection (`sublayer_inputs`: BERT
intermediate.dense, Llama mlp.gate_proj, GPT-2 mlp.c_fc), whose input is the sublayer input x. At run time each
output projection uses the input of the tap that ran last before it, which is its own sublayer's tap.
On convolutions (e.g. a CNN block's last conv), channels are the features and down/up are 1×1 convolutions.
Not mergeable: the nonlinearity keeps the adapter out of the base weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.core import routing
from peftlab.core.config import MethodConfig, TargetSpec, check, check_range, normalise_targets
from peftlab.core.context import CallContext
from peftlab.core.layer import BaseCall
from peftlab.core.sites import InsertedSite, ModelAdapter
from peftlab.core.targets import FEEDFORWARD_OUTPUTS, linear_types, name_matches, select_modules
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.errors import AdapterStateError, TargetError

PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
# Bottleneck sizes m of the presets. For hidden size 384 (MiniLM): tiny = d/48, about 6.5k parameters per site
# (0.35% of MiniLM with Houlsby's 12 sites); small = d/6, about 50k per site (2.6%). 8 and 64 are from Houlsby's grid.
PRESETS = {"tiny": 8, "small": 64}
CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
DEFAULT_REDUCTION = 16.0  # m = d / 16 when no size is given (Pfeiffer et al.)

# Sublayer output projections, by architecture: BERT/RoBERTa (".output.dense" ends both sublayers), DistilBERT,
# Llama-style, GPT-2.
HOULSBY_TARGETS = ("output.dense", "out_lin", "lin2", "o_proj", "down_proj", "c_proj")
FEEDFORWARD_INPUTS = ("intermediate.dense", "ffn.lin1", "mlp.gate_proj", "mlp.c_fc")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Adapter(MethodConfig):
    """Bottleneck adapter hyperparameters.

    Size (give at most one; none means reduction_factor=16): bottleneck m; reduction_factor (m = d // factor);
        preset "tiny" (m=8) or "small" (m=64).
    placement: "houlsby", "pfeiffer" or "parallel" (see the module docstring). targets: None picks the placement's
        sublayer output projections; otherwise Linear, Conv1D or Conv modules by name.
    sublayer_inputs: parallel only: the modules whose input is the sublayer input (None: the FFN's first
        projection by architecture). Required with custom targets.
    scale: s, the factor on the adapter's output (AdaptFormer used 0.1 for parallel adapters).
    activation: "relu", "gelu", "silu" or "tanh".
    """

    card: ClassVar[MethodCard] = MethodCard(
        id="adapter", name="Bottleneck adapter", kind=AttachKind.INSERTED_MODULE,
        inserted_at="after attention / feed-forward (or parallel to feed-forward)", form="bottleneck MLP",
        integration="scaled addition", param_formula="2·d·m + m + d", mergeable=False,
        paper="Houlsby et al. 2019; Pfeiffer et al. 2021; Chen et al. 2022",
        symbols="d: the site's output features (channels); m: the bottleneck size")
    study_lr: ClassVar[float] = 3e-3
    size_fields: ClassVar[tuple[str, ...]] = ("bottleneck",)

    bottleneck: int | None = None
    reduction_factor: float | None = None
    preset: str | None = None
    placement: str = "houlsby"
    sublayer_inputs: TargetSpec = None
    scale: float = 1.0
    activation: str = "relu"

    def validate(self) -> None:
        sizes = {k: v for k, v in (("bottleneck", self.bottleneck), ("reduction_factor", self.reduction_factor),
                                   ("preset", self.preset)) if v is not None}
        check(len(sizes) <= 1, "bottleneck", f"give one of bottleneck, reduction_factor or preset, not {sorted(sizes)}")
        if self.bottleneck is not None:
            check(isinstance(self.bottleneck, int) and not isinstance(self.bottleneck, bool) and self.bottleneck >= 1,
                  "bottleneck", f"must be an integer >= 1, got {self.bottleneck!r}")
        if self.reduction_factor is not None:
            check_range(self.reduction_factor, "reduction_factor", 0.0, float("inf"), low_open=True)
        check(self.preset is None or self.preset in PRESETS, "preset",
              f"must be one of {sorted(PRESETS)} (bottleneck {PRESETS}), got {self.preset!r}")
        check(self.placement in PLACEMENTS, "placement", f"must be one of {PLACEMENTS}, got {self.placement!r}")
        check(self.activation in ACTIVATIONS, "activation", f"must be one of {sorted(ACTIVATIONS)}, "
              f"got {self.activation!r}")
        check(isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool), "scale",
              f"must be a number, got {self.scale!r}")
        self._set("sublayer_inputs", normalise_targets(self.sublayer_inputs, "sublayer_inputs"))
        if self.placement != "parallel":
            check(self.sublayer_inputs is None, "sublayer_inputs", "is only used with placement='parallel'")
        else:
            check(self.targets is None or self.sublayer_inputs is not None, "sublayer_inputs",
                  "placement='parallel' with custom targets needs sublayer_inputs: the modules whose input is the "
                  "input of each targeted sublayer (e.g. ['intermediate.dense'] for targets ['output.dense'])")

    def size(self, d: int) -> int:
        """The bottleneck m for a site with d features."""
        if self.bottleneck is not None:
            return self.bottleneck
        if self.preset is not None:
            return PRESETS[self.preset]
        return max(1, int(d // (self.reduction_factor or DEFAULT_REDUCTION)))

    def supports(self, module: nn.Module) -> bool:
        return isinstance(module, (*linear_types(), nn.Conv1d, nn.Conv2d, nn.Conv3d))

    def sizes(self, model: nn.Module) -> dict[str, int]:
        if self.reduction_factor is None:
            return super().sizes(model)
        taps = self._taps() if self.placement == "parallel" else ()
        return {f"bottleneck at {path!r} (its {output_features(module)} features // reduction_factor)":
                self.size(output_features(module))
                for path, module in self.select_sites(model).items() if not (taps and name_matches(path, taps))}

    def _targets(self) -> TargetSpec:
        if self.targets is not None:
            return self.targets
        return HOULSBY_TARGETS if self.placement == "houlsby" else FEEDFORWARD_OUTPUTS

    def _taps(self) -> TargetSpec:
        return self.sublayer_inputs if self.sublayer_inputs is not None else FEEDFORWARD_INPUTS

    def _selecting(self, targets: TargetSpec) -> Adapter:
        """This config with `targets` as a plain (sequential) spec, for the core's target selection."""
        return dataclasses.replace(self, targets=targets, sublayer_inputs=None, placement="houlsby")

    def select_sites(self, model: nn.Module) -> dict[str, nn.Module]:
        sites = select_modules(model, self._selecting(self._targets()))
        if self.placement != "parallel":
            return sites
        taps = select_modules(model, self._selecting(self._taps()))
        both = sorted(set(sites) & set(taps))
        if both:
            raise TargetError(f"adapter: {both[0]!r} matches both targets and sublayer_inputs; a parallel adapter "
                              "reads the input of one module (the sublayer's first) and adds to the output of another")
        return {**taps, **sites}

    def build_model_adapter(self, model: nn.Module, sites: dict[str, nn.Module]) -> nn.Module | None:
        return InputSlot() if self.placement == "parallel" else None

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> nn.Module:
        if isinstance(shared, InputSlot) and name_matches(path, self._taps()):
            return InputTap(shared)
        d = output_features(module)
        return Bottleneck(module, path, d, self.size(d), float(self.scale), self.activation,
                          shared if isinstance(shared, InputSlot) else None)


def output_features(module: nn.Module) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    weight = module.weight
    return weight.shape[0] if isinstance(module, nn.Linear) else weight.shape[1]  # Conv1D stores (d_in, d_out)


class InputSlot(ModelAdapter):
    """Where a parallel adapter's taps leave the sublayer input for its bottlenecks, in each call's context.
    Model-level only to be shared by the adapter's sites: it holds no tensors to train or save."""

    routable = True

    @classmethod
    def route_prepare(cls, adapters: list[InputSlot | None], routing: Any, args: tuple, kwargs: dict[str, Any],
                      call: CallContext) -> tuple[tuple, dict[str, Any]]:
        return args, kwargs  # nothing to rewrite: the slots only hold per-call values

    def put(self, call: CallContext | None, x: torch.Tensor) -> None:
        _require_call(call).scratch(self)["value"] = x

    def take(self, call: CallContext | None, path: str) -> torch.Tensor:
        value = _require_call(call).scratch(self).pop("value", None)
        if value is None:
            raise AdapterStateError(f"parallel adapter at {path!r} ran before any of its sublayer_inputs; "
                                    "sublayer_inputs must name modules that run before the adapted output projection")
        return value


def _require_call(call: CallContext | None) -> CallContext:
    if call is None:
        raise AdapterStateError("a parallel adapter's layers ran outside a call of the adapted model; call the model "
                                "itself, not one of its layers")
    return call


class InputTap(InsertedSite):
    """Records the module's input for the parallel adapter at the end of the sublayer; the module runs unchanged."""

    def __init__(self, slot: InputSlot) -> None:
        super().__init__()
        self._slot = [slot]  # a list: a plain reference, not a submodule (the slot belongs to the model adapters)

    def forward(self, x: Any, base: BaseCall) -> Any:
        self._slot[0].put(base.call, x)
        return base(x)

    routable = True

    @classmethod
    def route(cls, sites: list[InputTap | None], index: torch.Tensor, x: Any, base: BaseCall,
              cache: routing.StackCache) -> Any:
        """Every routed parallel adapter here reads the same sublayer input: leave it in each one's slot."""
        for site in sites:
            if site is not None:
                site._slot[0].put(base.call, x)
        return base(x)


class Bottleneck(InsertedSite):
    """down (d → m), activation, up (m → d, zero at start); Linear layers, or 1×1 convolutions at conv sites.

    Sequential (no slot): h = base(x); h + s·g(h). Parallel: base(x) + s·g(x_in), x_in the sublayer input.
    """

    routable = True
    # g(h) is linear in up: -up negates g
    effect_parameters: ClassVar[dict[str, float]] = {"adapter_up.weight": 0.0, "adapter_up.bias": 0.0}

    def __init__(self, module: nn.Module, path: str, d: int, m: int, scale: float, activation: str,
                 slot: InputSlot | None) -> None:
        super().__init__()
        self.path = path
        if isinstance(module, nn.modules.conv._ConvNd):
            conv = CONVS[module.weight.dim() - 2]  # plain convs: subclasses (e.g. "same" padding) take other arguments
            self.adapter_down, self.adapter_up = conv(d, m, 1), conv(m, d, 1)
            self.channel_dim = 1
        else:
            self.adapter_down, self.adapter_up = nn.Linear(d, m), nn.Linear(m, d)
            self.channel_dim = -1
        self.act = ACTIVATIONS[activation]()
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)
        self.scale = scale
        self._slot = [slot] if slot is not None else []
        self.routable = self.channel_dim == -1  # routed as stacked Linear layers; convolution sites are not

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        h = base(x)
        source = self._slot[0].take(base.call, self.path) if self._slot else h
        if source.shape != h.shape:
            raise AdapterStateError(f"parallel adapter at {self.path!r}: the sublayer input has shape "
                                    f"{tuple(source.shape)}, the output {tuple(h.shape)}; sublayer_inputs must name "
                                    "the module whose input is this sublayer's input (same shape as its output)")
        weight = self.adapter_down.weight
        update = self.adapter_up(self.act(self.adapter_down(source.to(weight.dtype)))) * self.scale
        return h + update.to(h.dtype)

    @classmethod
    def route(cls, sites: list[Bottleneck | None], index: torch.Tensor, x: torch.Tensor, base: BaseCall,
              cache: routing.StackCache) -> torch.Tensor:
        """Each sample's (or token's) own s · up(act(down(h))), from stacked down / up layers (zero-padded to the
        largest bottleneck; act(0) = 0 for every activation offered, so padding and absent adapters add nothing)."""
        live = [s for s in sites if s is not None]
        if len({type(s.act) for s in live}) > 1:
            raise AdapterStateError("bottleneck adapters with different activations cannot run in one routed batch; "
                                    "run them in batches of their own")
        h = base(x)
        sources = [s._slot[0].take(base.call, s.path) for s in live if s._slot]  # parallel: the sublayer input
        source = h
        if sources:  # parallel adapters read the sublayer input, sequential ones the output
            parallel = torch.tensor([s is not None and bool(s._slot) for s in sites] + [False], device=h.device)
            source = torch.where(routing.pick(parallel, index, h), sources[0], h)
        down_w, down_b, up_w, up_b = cache.get(sites, lambda: (
            routing.stack([s.adapter_down.weight if s is not None else None for s in sites]),  # (m, d)
            routing.stack([s.adapter_down.bias if s is not None else None for s in sites]),  # (m,)
            routing.stack([s.adapter_up.weight * s.scale if s is not None else None for s in sites]),  # (d, m)
            routing.stack([s.adapter_up.bias * s.scale if s is not None else None for s in sites])))  # (d,)
        z = source.to(down_w.dtype)
        if index.dim() == 2:
            routing.check_token_shape(z, index)
            n, m = len(sites), down_w.shape[1]
            low = z.reshape(-1, z.shape[-1]) @ down_w[:n].reshape(n * m, -1).T + down_b[:n].reshape(-1)  # (N, n·m)
            low = live[0].act(low).view(-1, n, m) * routing.token_mask(index, n).unsqueeze(-1)  # (N, n, m)
            up_all = up_w[:n].permute(1, 0, 2).reshape(up_w.shape[1], n * m)  # (n, d, m) -> (d, n·m)
            update = (low.reshape(-1, n * m) @ up_all.T).view_as(z)
        else:
            z3 = z.reshape(z.shape[0], -1, z.shape[-1])  # (B, L, d)
            low = live[0].act(torch.bmm(z3, down_w[index].transpose(1, 2)) + down_b[index].unsqueeze(1))  # (B, L, m)
            update = torch.bmm(low, up_w[index].transpose(1, 2)).view_as(z)  # (B, L, d)
        update = update + routing.pick(up_b, index, update)
        return h + update.to(h.dtype)


Adapter.site_types = (Bottleneck, InputTap)
Adapter.model_adapter_type = InputSlot
