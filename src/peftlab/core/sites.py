"""The site contract: what every adapter placed at a module (a *site*) offers the core, declared with defaults.

A method's site classes derive from the base of the method's attach kind. The core, `io/` and `compose/` read the
traits below and nothing else, by attribute (never `getattr(..., default)`), so a missing or misspelt trait is an
error at registration (`check_site_class`), not a silent change of behaviour.

    Site                      forward(x, base) -> output; export_state / expected_state / import_state;
                              regularization_loss(); additive, reads_base_weight
      MergeableSite           merge(module) / unmerge(module): fold into the base weights and back
        WeightDeltaSite       y = base(x) + f(x; θ), equivalent to W + ΔW(θ)  (attach kind "weight delta")
          LowRankSite         ΔW = scaling · B A: factors() -> (A, B), scaling, delta_weight()
        SelectionSite         a trainable copy of the module (attach kind "selection")
      InsertedSite            h ← h + g(h; θ)  (attach kind "inserted module")
      InputSite               a transform of the input embeddings (attach kind "input side")
      RepresentationSite      edits hidden states at chosen positions (attach kind "representation")
    ModelAdapter              a model-level adapter: rewrites a call's inputs (prepare) and outputs (finish)

Per-call state never lives on a site: a forward reads and writes the `CallContext` it is handed (`base.call`).
"""

from __future__ import annotations

import abc
import difflib
import enum
import inspect
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from peftlab.core.typology import AttachKind
from peftlab.errors import ContractError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from peftlab.core.context import CallContext
    from peftlab.core.layer import BaseCall
    from peftlab.core.routing import Routing, StackCache


class SiteRole(str, enum.Enum):
    """Why a site is there: the method's own adapter, a bias trained outside the targets, or a module trained in
    full (modules_to_save)."""

    METHOD = "method"
    BIAS = "bias"
    SAVED = "saved"


class Site(nn.Module, metaclass=abc.ABCMeta):
    """One adapter at one module. `forward(x, base)`: `base(x)` runs the rest of the chain (inner adapters, then
    the base module); `base.module` is the base module and `base.call` the current call's context (or None)."""

    # Traits the core reads. Override as class attributes.
    additive: ClassVar[bool] = False  # output = base(x) + f(x), f not reading base(x): merges in any order
    reads_base_weight: ClassVar[bool] = False  # the update depends on W itself (DoRA): fold it only over W alone
    routable: ClassVar[bool] = False  # `route` runs several adapters of this class in one call, per sample or token
    # The parameters whose departure from a neutral value is the adapter's effect, linearly: name -> neutral value
    # (LoRA's B: 0, IA3's l: 1). Arithmetic adds and negates those (core: compose/weighted_adapter.py); a method
    # without any cannot be negated.
    effect_parameters: ClassVar[Mapping[str, float]] = {}

    @abc.abstractmethod
    def forward(self, x: Any, base: BaseCall) -> Any:
        """The adapted module's output for input x."""

    def export_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors saved for this site, keyed as in the file (default: the site's state_dict)."""
        return dict(self.state_dict())

    def expected_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors (names, shapes) a load must supply to a freshly built site (default: `export_state`)."""
        return self.export_state(module)

    def import_state(self, state: dict[str, torch.Tensor], module: nn.Module) -> None:
        """Inverse of `export_state`; the caller has checked names and shapes."""
        self.load_state_dict(state)

    def regularization_loss(self) -> torch.Tensor | None:
        """A loss term this site adds to the training objective (e.g. KaSA's), or None."""
        return None

    @classmethod
    def route(cls, sites: Sequence[Site | None], index: torch.Tensor, x: Any, base: BaseCall,
              cache: StackCache) -> Any:
        """The output when position p of the batch (a sample, index (B,); or a token, index (B, T)) uses
        sites[index[p]] alone, and the base where index is -1 or names a None site (core/routing.py). One batched
        computation for all of them, no loop over the adapters. Required when `routable` is True."""
        raise NotImplementedError(f"{cls.__name__} cannot run several adapters in one call")


class MergeableSite(Site):
    """A site whose effect can be folded into the base module's weights in place, and taken out again."""

    @abc.abstractmethod
    def merge(self, module: nn.Module) -> None:
        """Fold this adapter into `module`'s weights (under torch.no_grad)."""

    @abc.abstractmethod
    def unmerge(self, module: nn.Module) -> None:
        """Undo `merge`."""


class WeightDeltaSite(MergeableSite):
    """y = base(x) + f(x; θ), equivalent to running the module with W + ΔW(θ)."""


class LowRankSite(WeightDeltaSite):
    """ΔW = scaling · B A. `compose/` combines such sites through their factors (cat, svd, TIES, ...)."""

    additive: ClassVar[bool] = True
    scaling: float

    @abc.abstractmethod
    def factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(A, B) as stored: A (r, d_in[, k...]) and B (d_out, r[, 1...]); ΔW = scaling · B A."""

    @abc.abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """ΔW in the base weight's own layout."""

    def trained_bias(self) -> nn.Parameter | None:
        """A bias delta trained next to the update (LoRA's bias options), or None."""
        return None


class SelectionSite(MergeableSite):
    """Trains a chosen subset of existing parameters, as a copy (the base stays intact)."""


class InsertedSite(Site):
    """h ← h + g(h; θ), sequential or parallel to a sublayer."""


class InputSite(Site):
    """Transforms the input embeddings (at the embedding module)."""


class RepresentationSite(Site):
    """Edits hidden states at chosen positions and layers."""


class ModelAdapter(nn.Module, metaclass=abc.ABCMeta):
    """A model-level adapter: sees every call of the base model. Holds the method's model-wide tensors (prompts,
    prefixes) or state shared by its sites. Per-call values go into `call.scratch(self)`."""

    # Whether it takes part in each call (prepare/finish, or sites that keep per-call values in its scratch); one that
    # only holds tensors its sites share (VeRA's projections) sets False, and calls then open no context for it.
    in_calls: ClassVar[bool] = True

    def prepare(self, args: tuple, kwargs: dict[str, Any], call: CallContext) -> tuple[tuple, dict[str, Any]]:
        """The call's arguments, rewritten before the base model runs (default: unchanged)."""
        return args, kwargs

    def finish(self, output: Any, call: CallContext) -> Any:
        """The base model's output, rewritten after the call (default: unchanged)."""
        return output

    def export_state(self, base_model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors saved for the model adapter, under bare file keys (default: its state_dict)."""
        return dict(self.state_dict())

    def expected_state(self, base_model: nn.Module) -> dict[str, torch.Tensor]:
        return self.export_state(base_model)

    def import_state(self, state: dict[str, torch.Tensor], base_model: nn.Module) -> None:
        self.load_state_dict(state)

    def regularization_loss(self) -> torch.Tensor | None:
        return None

    routable: ClassVar[bool] = False  # route_prepare / route_finish run several adapters' prepare / finish at once

    @classmethod
    def route_prepare(cls, adapters: Sequence[ModelAdapter | None], routing: Routing, args: tuple,
                      kwargs: dict[str, Any], call: CallContext) -> tuple[tuple, dict[str, Any]]:
        """`prepare` for a call whose samples use different adapters (adapters[i] for routing index i, None: the
        base). Required when `routable` is True."""
        raise NotImplementedError(f"{cls.__name__} cannot run several adapters in one call")

    @classmethod
    def route_finish(cls, adapters: Sequence[ModelAdapter | None], output: Any, call: CallContext) -> Any:
        """`finish` for such a call (default: unchanged)."""
        return output


# The site base of each attach kind: a method's sites derive from it.
KIND_BASES: dict[AttachKind, type[Site]] = {
    AttachKind.WEIGHT_DELTA: WeightDeltaSite,
    AttachKind.INSERTED_MODULE: InsertedSite,
    AttachKind.INPUT_SIDE: InputSite,
    AttachKind.REPRESENTATION: RepresentationSite,
    AttachKind.SELECTION: SelectionSite,
}
TRAITS = ("additive", "reads_base_weight", "in_calls", "routable", "route", "effect_parameters", "scaling",
          "trained_bias", "factors", "delta_weight", "merge", "unmerge", "export_state", "expected_state",
          "import_state", "regularization_loss")


def check_site_class(site_cls: type, kind: AttachKind, mergeable: bool, method: str) -> None:
    """Refuse a site class that does not fit its method's card, names the trait that is wrong, and the fix."""
    where = f"method {method!r}: site class {site_cls.__name__}"
    if not (isinstance(site_cls, type) and issubclass(site_cls, Site)):
        raise ContractError(f"{where} is not a peftlab.core.sites.Site; derive it from {KIND_BASES[kind].__name__}")
    if not issubclass(site_cls, KIND_BASES[kind]):
        raise ContractError(f"{where} must derive from {KIND_BASES[kind].__name__} (the card says {kind.value!r})")
    missing = sorted(getattr(site_cls, "__abstractmethods__", ()))
    if missing:
        raise ContractError(f"{where} does not implement {', '.join(missing)}, which the contract requires")
    if site_cls.routable and site_cls.route.__func__ is Site.route.__func__:
        raise ContractError(f"{where} says routable = True but does not implement route()")
    if mergeable and not issubclass(site_cls, MergeableSite):
        raise ContractError(f"{where}: the card says mergeable, so it must implement merge()/unmerge() "
                            "(derive from MergeableSite)")
    for name in _own_names(site_cls):
        close = difflib.get_close_matches(name, TRAITS, n=1, cutoff=0.8)
        if close and close[0] != name:
            raise ContractError(f"{where} defines {name!r}, which is not a trait; did you mean {close[0]!r}?")


def check_model_adapter_class(adapter_cls: type, method: str) -> None:
    if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, ModelAdapter)):
        raise ContractError(f"method {method!r}: model adapter class {getattr(adapter_cls, '__name__', adapter_cls)} "
                            "is not a peftlab.core.sites.ModelAdapter")
    missing = sorted(getattr(adapter_cls, "__abstractmethods__", ()))
    if missing:
        raise ContractError(f"method {method!r}: model adapter {adapter_cls.__name__} does not implement "
                            f"{', '.join(missing)}")
    if adapter_cls.routable and adapter_cls.route_prepare.__func__ is ModelAdapter.route_prepare.__func__:
        raise ContractError(f"method {method!r}: model adapter {adapter_cls.__name__} says routable = True but does "
                            "not implement route_prepare()")


def _own_names(cls: type) -> list[str]:
    """Public names a class (and its own bases up to Site) defines."""
    names: list[str] = []
    for klass in inspect.getmro(cls):
        if klass in (Site, nn.Module, object) or not issubclass(klass, Site):
            continue
        names += [n for n in vars(klass) if not n.startswith("_")]
    return names
