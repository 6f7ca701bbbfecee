"""The wrapper that puts adapters around one base module.

`AdaptedLayer` replaces a base module in its parent. Each named adapter at that site is a `Site`
(core/sites.py):

    forward(x, base) -> output

where `base` is a `BaseCall`: calling `base(x)` runs the rest of the chain (other active adapters, then the base
module with the layer's other arguments); `base.call` is the current call's context (core/context.py) or None. A
weight-delta method returns `base(x) + delta(x)`, a scale returns `base(x) * l`, an inserted module
`h = base(x); h + g(h)`, a selection method calls its own copy of the module. Several active adapters compose by
nesting; merged adapters are skipped (their effect lives in the base weights).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from peftlab.core.context import CallContext, current_call
from peftlab.core.routing import Routing, StackCache
from peftlab.core.sites import MergeableSite
from peftlab.errors import AdapterStateError


class BaseCall:
    """The continuation an adapter calls: the remaining adapters of the chain, then the base module."""

    __slots__ = ("_rest", "args", "call", "kwargs", "module")

    def __init__(self, module: nn.Module, args: tuple, kwargs: dict, rest: tuple[nn.Module, ...],
                 call: CallContext | None) -> None:
        self.module = module
        self.args = args
        self.kwargs = kwargs
        self._rest = rest
        self.call = call

    @property
    def is_plain(self) -> bool:
        """True when calling this runs the bare base module on x alone (fused fast paths may then skip it)."""
        return not self._rest and not self.args and not self.kwargs

    def __call__(self, x: Any) -> Any:
        if self._rest:
            return self._rest[0](x, BaseCall(self.module, self.args, self.kwargs, self._rest[1:], self.call))
        return self.module(x, *self.args, **self.kwargs)


class AdaptedLayer(nn.Module):
    """A base module plus the named adapters placed at it."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.merged: list[str] = []
        self._chain: tuple[nn.Module, ...] = ()
        self._stacks = StackCache()
        # (len(merged) when kept, the base module's tensors then): kept by merge(keep_original=True) for unmerge
        self._original: tuple[int, dict[str, torch.Tensor]] | None = None

    def set_active(self, names: tuple[str, ...]) -> None:
        """Run the adapters `names` (in order, first outermost) that live here and are not merged."""
        self._chain = tuple(self.adapters[n] for n in names if n in self.adapters and n not in self.merged)

    def forget_stacks(self) -> None:
        """Drop the routed stacks kept between calls (after adapters were added, deleted or reactivated)."""
        self._stacks = StackCache()

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        call = current_call()
        if call is not None and call.routing is not None:
            return self._routed(x, args, kwargs, call, call.routing)
        chain = self._chain
        if not chain:
            return self.base_layer(x, *args, **kwargs)
        return chain[0](x, BaseCall(self.base_layer, args, kwargs, chain[1:], call))

    def _routed(self, x: Any, args: tuple, kwargs: dict, call: CallContext, routing: Routing) -> Any:
        """Each position (sample or token) through its own adapter here, in one pass per site class: the classes
        present nest like a chain, each leaving the positions routed elsewhere to the rest of it."""
        sites = [self.adapters[n] if n in self.adapters else None for n in routing.names]  # noqa: SIM401
        classes = list(dict.fromkeys(type(s) for s in sites if s is not None))
        steps = tuple(functools.partial(_route_class, kind, [s if type(s) is kind else None for s in sites],
                                        routing.index, self._stacks) for kind in classes)
        if not steps:
            return self.base_layer(x, *args, **kwargs)
        return steps[0](x, BaseCall(self.base_layer, args, kwargs, steps[1:], call))

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


def _route_class(kind: type, sites: list, index: torch.Tensor, stacks: StackCache, x: Any, base: BaseCall) -> Any:
    return kind.route(sites, index.to(_device_of(x)), x, base, stacks)


def _device_of(x: Any) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
