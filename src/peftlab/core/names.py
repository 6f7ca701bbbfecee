"""Adapter names: what a valid one is, and one name or several as a tuple."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from peftlab.errors import AdapterStateError

MAX_ADAPTER_NAME_BYTES = 128  # a name becomes a folder name when saved (file systems allow 255 bytes)


def check_adapter_name(name: str) -> str:
    """`name` if it can name an adapter: a plain identifier of at most 128 bytes that is not a torch module
    attribute."""
    if not isinstance(name, str) or not name.isidentifier():
        raise AdapterStateError(f"adapter name {name!r} is not a plain identifier (letters, digits, underscores, "
                                "not starting with a digit); choose e.g. 'default' or 'task_a'")
    if len(name.encode("utf-8")) > MAX_ADAPTER_NAME_BYTES:
        raise AdapterStateError(f"adapter name {name[:40]!r}... is {len(name.encode('utf-8'))} bytes long; at most "
                                f"{MAX_ADAPTER_NAME_BYTES} are allowed, as a saved adapter gets a folder of that name")
    # adapters live in ModuleDicts, which refuse the names of their methods and attributes (training, _modules, ...)
    if hasattr(nn.ModuleDict, name) or name in vars(nn.ModuleDict()):
        raise AdapterStateError(f"adapter name {name!r} is the name of a torch module method or attribute; choose "
                                f"another, e.g. '{name.strip('_')}_adapter'")
    return name


def as_names(value: str | Sequence[str]) -> tuple[str, ...]:
    """One adapter name or several, as a tuple; a plain string is one name, not its letters."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise AdapterStateError(f"expected an adapter name or a list of names, got {value!r}")
    return tuple(value)
