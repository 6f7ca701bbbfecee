"""Checks on an adapter file's tensors. The header checks read the safetensors header only (names, dtypes, shapes),
never the data, so a load refuses a file before allocating anything for it.

`check_sizes`: every size the config asks for (MethodConfig.sizes: the fields a method lists in `size_fields`, such
as ranks, prompt lengths and bottleneck widths, and sizes it derives, such as a bottleneck from a reduction factor)
must fit the file, whose tensors carry each size as a dimension: a size above every dimension in the header cannot
describe these weights, and building the adapter for it could ask for any amount of memory. The exact shapes are
compared tensor by tensor once the adapter is built.
`check_kinds`: a tensor must be of the kind (float, integer, bool) the adapter holds there.
`non_finite`: the tensors holding NaN or infinity, checked when a load reads them and before a save writes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

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


def check_sizes(config: MethodConfig, model: torch.nn.Module, header: TensorHeader, source: Path,
                weights_file: Path) -> None:
    """AdapterLoadError when a size `config` asks for on `model` (MethodConfig.sizes) exceeds every dimension of the
    file's tensors. `source`: the file the config was read from, for the message."""
    largest = max((dim for shape in header.shapes.values() for dim in shape), default=0)
    for name, size in config.sizes(model).items():
        if size > largest:
            raise AdapterLoadError(
                f"{source} sets {name}={size}, but no tensor in {weights_file.name} has a dimension above {largest}: "
                "the config does not describe these weights (refused before building the adapter). Restore the "
                "config saved with the weights, or save the adapter again")


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
