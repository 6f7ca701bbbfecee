"""Attach and detach: the only code that changes a model's module tree."""

from __future__ import annotations

from torch import nn

from peftlab.core.layer import AdaptedLayer


def _parent_of(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, child = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), child


def wrap(root: nn.Module, path: str) -> AdaptedLayer:
    """Put an AdaptedLayer around the module at `path` (or return the one already there)."""
    parent, child = _parent_of(root, path)
    module = getattr(parent, child)
    if isinstance(module, AdaptedLayer):
        return module
    layer = AdaptedLayer(module)
    setattr(parent, child, layer)
    return layer


def unwrap(root: nn.Module, path: str) -> nn.Module:
    """Replace the AdaptedLayer at `path` by its base module again."""
    parent, child = _parent_of(root, path)
    layer = getattr(parent, child)
    if not isinstance(layer, AdaptedLayer):
        return layer
    setattr(parent, child, layer.base_layer)
    return layer.base_layer


def logical_path(name: str) -> str:
    """A module's path as the model names it, without the ".base_layer" of wrappers around it or its parents."""
    return name.replace(".base_layer.", ".").removesuffix(".base_layer")


def adapted_layers(root: nn.Module) -> dict[str, AdaptedLayer]:
    """Every AdaptedLayer in the model, by its logical path (an adapted module inside an adapted block, e.g. LoRA
    inside a block LoReFT wraps, keeps its own path)."""
    return {logical_path(name): m for name, m in root.named_modules() if isinstance(m, AdaptedLayer)}


def place_like(adapter: nn.Module, module: nn.Module) -> nn.Module:
    """Move a new adapter to the base module's device. Float32/64 bases share their dtype with the adapter;
    half-precision bases keep float32 adapters (the adapter casts inputs itself), as low-precision adapter weights
    train poorly."""
    ref = next(module.parameters(), None)
    if ref is None:
        return adapter
    if ref.dtype.is_floating_point and ref.element_size() >= 4:
        return adapter.to(device=ref.device, dtype=ref.dtype)
    return adapter.to(device=ref.device)
