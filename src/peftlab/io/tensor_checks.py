"""Checks on an adapter file's tensors. The header checks read the safetensors header only (names, dtypes, shapes),
never the data, so a load refuses a file before allocating anything for it.

`check_sizes`: every size the config gives (the fields a method lists in `size_fields`: ranks, prompt lengths,
bottleneck widths) must fit the file, whose tensors carry each size as a dimension: a size above every dimension in
the header cannot describe these weights, and building the adapter for it could ask for any amount of memory.
The exact shapes are compared tensor by tensor once the adapter is built.
`AllocationLimit`: while a load builds the adapter, no new tensor may exceed the largest tensor of the file or the
model, which also bounds sizes a config derives rather than gives (a bottleneck from a reduction factor).
`check_kinds`: a tensor must be of the kind (float, integer, bool) the adapter holds there.
`non_finite`: the tensors holding NaN or infinity, checked when a load reads them and before a save writes them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.overrides import TorchFunctionMode

from peftlab.core.config import MethodConfig
from peftlab.errors import AdapterLoadError


@dataclasses.dataclass(frozen=True)
class TensorHeader:
    """A safetensors file's header: each tensor's shape and dtype name ("F32", "BF16", "I64", "BOOL", ...)."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]


def read_header(weights_file: Path) -> TensorHeader:
    """The header of `weights_file` (safetensors validates it and that the data it describes fits the file)."""
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118  (not a dict)
            return TensorHeader(shapes={k: tuple(s.get_shape()) for k, s in slices.items()},
                                dtypes={k: s.get_dtype() for k, s in slices.items()},
                                metadata=dict(handle.metadata() or {}))
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error types for corrupt headers)
        raise AdapterLoadError(f"{weights_file} is not a readable safetensors file: {err}") from None


def check_sizes(config: MethodConfig, header: TensorHeader, config_file: Path, weights_file: Path) -> None:
    """AdapterLoadError when a size in `config` exceeds every dimension of the file's tensors."""
    largest = max((dim for shape in header.shapes.values() for dim in shape), default=0)
    for field in type(config).size_fields:
        value = getattr(config, field)
        for size in value.values() if isinstance(value, Mapping) else (value,):
            if size is not None and size > largest:
                raise AdapterLoadError(
                    f"{config_file} sets {field}={size}, but no tensor in {weights_file.name} has a dimension above "
                    f"{largest}: the config does not describe these weights (refused before building the adapter). "
                    "Restore the config saved with the weights, or save the adapter again")


_FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                        torch.randperm, torch.eye, torch.empty_strided})


class AllocationLimit(TorchFunctionMode):
    """While active, a tensor factory call (torch.empty, zeros, randn, ...) asking for more than `limit` values raises
    AdapterLoadError instead of allocating. Tensors made from others (ops, *_like) are bounded by those."""

    def __init__(self, limit: int, config_file: Path) -> None:
        super().__init__()
        self.limit = limit
        self.config_file = config_file

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _FACTORIES:
            shape = requested_shape(func, args, kwargs)
            if shape is not None and math.prod(shape) > self.limit:
                raise AdapterLoadError(
                    f"building the adapter that {self.config_file} describes asks for a tensor of shape {shape} "
                    f"({math.prod(shape):,} values), larger than any tensor of the adapter file or the model "
                    f"({self.limit:,} values): the config does not describe these weights (refused before allocating)")
        return func(*args, **kwargs)


def requested_shape(func: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[int, ...] | None:
    """The shape a tensor factory call asks for (None when it cannot be read from the arguments)."""
    if func is torch.randperm:
        size: Any = (args[0] if args else kwargs.get("n"),)
    elif func is torch.eye:
        n = args[0] if args else kwargs.get("n")
        size = (n, args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n))
    elif "size" in kwargs:
        size = kwargs["size"]
    elif func in (torch.full, torch.empty_strided):
        size = args[0] if args else None
    elif func is torch.randint:
        size = next((a for a in args if isinstance(a, (tuple, list, torch.Size))), None)
    else:
        size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
    try:
        return tuple(int(dim) for dim in size)
    except (TypeError, ValueError):
        return None


def largest_numel(header: TensorHeader, model: torch.nn.Module) -> int:
    """The most values any one tensor of the file or the model holds."""
    in_file = (math.prod(shape) for shape in header.shapes.values())
    in_model = (t.numel() for t in (*model.parameters(), *model.buffers()))
    return max((*in_file, *in_model), default=0)


def dtype_kind(dtype: str | torch.dtype) -> str:
    """The kind of a safetensors dtype name or a torch dtype: "float", "int", "bool" or "complex"."""
    if isinstance(dtype, torch.dtype):
        if dtype == torch.bool:
            return "bool"
        return "float" if dtype.is_floating_point else "complex" if dtype.is_complex else "int"
    if dtype == "BOOL":
        return "bool"
    if dtype.startswith("C"):
        return "complex"
    return "int" if dtype.startswith(("I", "U")) else "float"


def check_kinds(expected: Mapping[str, torch.Tensor], stored: Mapping[str, str], header: TensorHeader,
                weights_file: Path, allow_non_float: bool) -> list[str]:
    """The keys whose file tensor is an integer or bool tensor where the adapter holds floats, when
    `allow_non_float` (the caller casts them); any other difference of kind raises AdapterLoadError."""
    cast = []
    for key, target in expected.items():
        found, wanted = dtype_kind(header.dtypes[stored[key]]), dtype_kind(target.dtype)
        if found == wanted:
            continue
        if allow_non_float and wanted == "float" and found in ("int", "bool"):
            cast.append(key)
            continue
        hint = (" (pass allow_non_float=True to load it cast to float, with a warning)"
                if wanted == "float" and found in ("int", "bool") else "")
        raise AdapterLoadError(f"{weights_file.name}: tensor {key!r} holds {header.dtypes[stored[key]]} ({found}) "
                               f"values, but the adapter holds {wanted} values there ({target.dtype}){hint}")
    return cast


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of the floating-point tensors holding NaN or infinity."""
    return [key for key, value in tensors.items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]


def describe_keys(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
