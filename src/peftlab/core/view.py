"""A read-only view of one adapter of an AdaptedModel: what `io/`, `compose/` and users read instead of its
internals (`model.adapter(name)`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from peftlab.core.config import MethodConfig
from peftlab.core.sites import ModelAdapter, Site, SiteRole


@dataclasses.dataclass(frozen=True)
class SiteEntry:
    """One site of an adapter: where it is, why it is there, the site itself and the base module it adapts."""

    path: str
    role: SiteRole
    site: Site
    module: nn.Module


@dataclasses.dataclass(frozen=True)
class AdapterView:
    """One adapter: its name, config, sites by module path (in placement order), its model-level adapter (or None)
    and the base model it lives in. The view does not change the model; its sites are the live modules."""

    name: str
    config: MethodConfig
    sites: Mapping[str, SiteEntry]
    model_adapter: ModelAdapter | None
    base_model: nn.Module

    def paths(self, role: SiteRole | None = None) -> list[str]:
        """The module paths of the sites with `role` (all sites when None), sorted."""
        return sorted(p for p, e in self.sites.items() if role is None or e.role is role)

    def entries(self, role: SiteRole | None = None) -> Iterator[SiteEntry]:
        return (e for e in self.sites.values() if role is None or e.role is role)

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter the adapter owns (its sites' and its model adapter's)."""
        for entry in self.sites.values():
            yield from entry.site.parameters()
        if self.model_adapter is not None:
            yield from self.model_adapter.parameters()

    def state(self, expected: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """{site path (or "" for the model adapter): {key: tensor}}, as the sites export them (`expected`: the ones a
        load of this adapter must supply)."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for path, entry in self.sites.items():
            export = entry.site.expected_state if expected else entry.site.export_state
            out[path] = export(entry.module)
        if self.model_adapter is not None:
            export = self.model_adapter.expected_state if expected else self.model_adapter.export_state
            out[""] = export(self.base_model)
        return out

