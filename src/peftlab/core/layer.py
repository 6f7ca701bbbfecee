"""The wrapper that puts adapters around one base module, and the protocols methods implement.

`AdaptedLayer` replaces a base module in its parent. Each named adapter at that site is a `SiteAdapter`:

    forward(x, base) -> output

where `base` is a `BaseCall`: calling `base(x)` runs the rest of the chain (other active adapters, then the base
module with the layer's other arguments). A weight-delta method returns `base(x) + delta(x)`, a scale returns
`base(x) * l`, an inserted module `h = base(x); h + g(h)`, a selection method calls its own copy of the module.
Several active adapters compose by nesting; merged adapters are skipped (their effect lives in the base weights).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from peftlab.errors import AdapterStateError


class BaseCall:
    """The continuation an adapter calls: the remaining adapters of the chain, then the base module."""

    __slots__ = ("_rest", "args", "kwargs", "module")

    def __init__(self, module: nn.Module, args: tuple, kwargs: dict, rest: tuple[nn.Module, ...]) -> None:
        self.module = module
        self.args = args
        self.kwargs = kwargs
        self._rest = rest

    @property
    def is_plain(self) -> bool:
        """True when calling this runs the bare base module on x alone (fused fast paths may then skip it)."""
        return not self._rest and not self.args and not self.kwargs

    def __call__(self, x: Any) -> Any:
        if self._rest:
            return self._rest[0](x, BaseCall(self.module, self.args, self.kwargs, self._rest[1:]))
        return self.module(x, *self.args, **self.kwargs)


@runtime_checkable
class SiteAdapter(Protocol):
    """One adapter at one site. Mergeable ones also implement `merge(module)` and `unmerge(module)`."""

    def forward(self, x: Any, base: BaseCall) -> Any: ...


@runtime_checkable
class MergeableSite(Protocol):
    def merge(self, module: nn.Module) -> None: ...

    def unmerge(self, module: nn.Module) -> None: ...


@runtime_checkable
class ModelAdapter(Protocol):
    """A model-level adapter (input-side methods): rewrites the model's call arguments before it runs.

    Optional members, used when present:
        finish(output) -> output: rewrites the base model's output after the call (e.g. drops the positions of
            virtual tokens); called for the adapters whose `prepare` ran in that call, last first.
        export_state(base_model) / import_state(state, base_model): the tensors saved for it, under bare file keys,
            as for sites (default: its state_dict).
        file_config() -> dict: entries added to adapter_config.json that depend on the base model (task_type,
            token_dim, ...).
    """

    def prepare(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]: ...


class AdaptedLayer(nn.Module):
    """A base module plus the named adapters placed at it."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.merged: list[str] = []
        self._chain: tuple[nn.Module, ...] = ()
        # (len(merged) when kept, the base module's tensors then): kept by merge(keep_original=True) for unmerge
        self._original: tuple[int, dict[str, torch.Tensor]] | None = None

    def set_active(self, names: tuple[str, ...]) -> None:
        """Run the adapters `names` (in order, first outermost) that live here and are not merged."""
        self._chain = tuple(self.adapters[n] for n in names if n in self.adapters and n not in self.merged)

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        chain = self._chain
        if not chain:
            return self.base_layer(x, *args, **kwargs)
        return chain[0](x, BaseCall(self.base_layer, args, kwargs, chain[1:]))

    # --- merging ------------------------------------------------------------------------------------------------
    def merge(self, name: str, keep_original: bool = False) -> None:
        """Fold adapter `name` into the base module's weights. `keep_original`: first keep a copy of the base
        module's tensors (unless one is kept already), which `unmerge` restores bit for bit."""
        adapter = self.adapters[name]
        if name in self.merged:
            return
        if not isinstance(adapter, MergeableSite):
            raise AdapterStateError(f"adapter {name!r} ({type(adapter).__name__}) cannot be merged into the base "
                                    "weights; keep it unmerged, or call unload() to drop it")
        if keep_original and self._original is None:
            kept = {k: v.detach().clone() for k, v in self.base_layer.state_dict().items()}
            self._original = (len(self.merged), kept)
        with torch.no_grad():
            adapter.merge(self.base_layer)
        self.merged.append(name)

    def unmerge(self) -> None:
        """Undo the merges, last first: each adapter subtracts (or divides out) its update, which restores the base
        weights up to rounding; back at a kept copy, the tensors are restored from it exactly."""
        with torch.no_grad():
            while self.merged:
                self.adapters[self.merged.pop()].unmerge(self.base_layer)
                if self._original is not None and len(self.merged) == self._original[0]:
                    self.base_layer.load_state_dict(self._original[1])
                    self._original = None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Model code that reads e.g. `self.query.weight` keeps working on the wrapped module.
            return getattr(self._modules["base_layer"], name)

    def extra_repr(self) -> str:
        return f"adapters={list(self.adapters)}, merged={self.merged}"


def export_state(site: nn.Module, module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a site saves, keyed as in the file (a site may define `export_state` to rename or convert)."""
    custom = getattr(site, "export_state", None)
    return custom(module) if custom is not None else dict(site.state_dict())


def expected_state(site: nn.Module, module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors (names, shapes) a load must supply for a freshly built site; `export_state` unless the site
    cannot export before it is loaded (a site may define `expected_state`)."""
    custom = getattr(site, "expected_state", None)
    return custom(module) if custom is not None else export_state(site, module)


def import_state(site: nn.Module, state: dict[str, torch.Tensor], module: nn.Module) -> None:
    """Inverse of `export_state`; shapes are checked by the caller."""
    custom = getattr(site, "import_state", None)
    if custom is not None:
        custom(state, module)
    else:
        site.load_state_dict(state)
