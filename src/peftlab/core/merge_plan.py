"""Which merges reproduce the unmerged model: mergeable methods, tied weights, and the order of stacked adapters."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from peftlab.core.attach import logical_path
from peftlab.core.layer import AdaptedLayer
from peftlab.core.sites import MergeableSite
from peftlab.core.view import AdapterView
from peftlab.errors import AdapterStateError


def check_mergeable(adapters: list[AdapterView], base_model: nn.Module) -> None:
    """Refuse to merge an adapter whose method is not mergeable, or whose update would reach a tied weight."""
    owners = parameter_owners(base_model)
    for adapter in adapters:
        _check_one(adapter, owners)


def _check_one(adapter: AdapterView, owners: dict[int, list[str]]) -> None:
    method = adapter.config.card
    if not method.mergeable:
        raise AdapterStateError(f"adapter {adapter.name!r} uses {method.name}, which is not mergeable "
                                f"({method.kind.value}); it must stay attached. Use the AdaptedModel as is, "
                                "or unload() to drop it")
    for path, entry in adapter.sites.items():
        if not isinstance(entry.site, MergeableSite):
            raise AdapterStateError(f"adapter {adapter.name!r} at {path!r} cannot be merged")
        for param in entry.module.parameters(recurse=False):
            shared = [p for p in owners[id(param)] if p != path]
            if shared:
                raise AdapterStateError(
                    f"adapter {adapter.name!r} cannot be merged: the weights of {path!r} are tied to {shared[0]!r}, "
                    "so folding the update in would change that module too. Keep the adapter unmerged, or untie "
                    "the weights first (e.g. config.tie_word_embeddings=False)")


def parameter_owners(base_model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> paths of the base modules holding it (several paths: tied weights)."""
    owners: dict[int, list[str]] = {}
    for path, module in base_model.named_modules(remove_duplicate=False):
        if isinstance(module, AdaptedLayer) or ".adapters." in path:
            continue
        path = logical_path(path)
        for param in module.parameters(recurse=False):
            if path not in owners.setdefault(id(param), []):
                owners[id(param)].append(path)
    return owners


def innermost_first(names: Iterable[str], active: tuple[str, ...]) -> list[str]:
    """The order to fold `names` in: the last active adapter (innermost) first, inactive ones before all."""
    return sorted(names, key=lambda n: -active.index(n) if n in active else -len(active))


def check_stack(layer: AdaptedLayer, active: tuple[str, ...], merging: set[str], path: str) -> None:
    """Folding `merging` innermost first reproduces the stack at this layer unless an adapter that stays unmerged
    runs inside a merged one (exact only when both only add to the output: LoRA, BitFit, sparse deltas), or a
    merged adapter whose update depends on the base weight (DoRA) has another adapter inside it."""
    chain = [n for n in active if n in layer.adapters and n not in layer.merged]  # outermost first
    for i, name in enumerate(chain):
        if name not in merging:
            continue
        inner = chain[i + 1:]
        site = layer.adapters[name]
        if inner and site.reads_base_weight:
            raise AdapterStateError(f"cannot merge {name!r} at {path!r}: its update depends on the base weight, and "
                                    f"{inner} run inside it there; activate {name!r} alone to merge it")
        kept = [n for n in inner if n not in merging]
        if kept and not (site.additive and all(layer.adapters[n].additive for n in kept)):
            raise AdapterStateError(f"cannot merge {name!r} at {path!r} while {kept} stay unmerged inside it: the "
                                    "result would differ from the unmerged model. Merge them together, e.g. "
                                    "merge_adapter() for all active adapters")
