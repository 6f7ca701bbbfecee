"""The method registry: a method joins by decorating its config class with `@register`."""

from __future__ import annotations

import difflib
import functools
from typing import Any, TypeVar

from peftlab.core.config import MethodConfig
from peftlab.errors import ConfigError

_METHODS: dict[str, type[MethodConfig]] = {}
ConfigT = TypeVar("ConfigT", bound=type[MethodConfig])


def register(config_cls: ConfigT) -> ConfigT:
    """Add a method (its config class, carrying `card`) to the registry. Ids are never substrings of each other."""
    method_id = config_cls.card.id
    if not method_id.isidentifier() or method_id != method_id.lower():
        raise ValueError(f"method id {method_id!r} must be a lower-case identifier")
    existing = _METHODS.get(method_id)
    if existing is not None and existing is not config_cls:
        raise ValueError(f"method id {method_id!r} is registered twice")
    for other in _METHODS:
        if other != method_id and (other in method_id or method_id in other):
            raise ValueError(f"method ids {other!r} and {method_id!r} must not be substrings of each other")
    _check_names_on_construction(config_cls)
    _METHODS[method_id] = config_cls
    return config_cls


def _check_names_on_construction(config_cls: type) -> None:
    """`LoRA(rr=3)` raises ConfigError naming the closest fields, instead of the dataclass's bare TypeError."""
    init = config_cls.__init__
    if getattr(init, "_checks_names", False):
        return

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        type(self).check_field_names(kwargs)
        init(self, *args, **kwargs)

    __init__._checks_names = True  # type: ignore[attr-defined]
    config_cls.__init__ = __init__


def methods() -> list[str]:
    """The ids of every registered method, in registration order."""
    _load_builtin_methods()
    return list(_METHODS)


def get_method(method_id: str) -> type[MethodConfig]:
    """The config class of a method id; ConfigError with the closest ids when unknown."""
    _load_builtin_methods()
    try:
        return _METHODS[method_id]
    except KeyError:
        close = difflib.get_close_matches(str(method_id), list(_METHODS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown method {method_id!r}{hint} Registered methods: {', '.join(_METHODS)}") from None


def config_for(method_id: str, **fields: Any) -> MethodConfig:
    """Build a method config by id, e.g. config_for("lora", r=4); ConfigError on an unknown id or field."""
    return get_method(method_id)(**fields)


def _load_builtin_methods() -> None:
    import peftlab.methods  # noqa: F401  (importing the package registers every built-in method)


def method_for_file_type(peft_type: str) -> type[MethodConfig] | None:
    """The first registered method whose adapter_config.json "peft_type" is `peft_type` (None if there is none)."""
    _load_builtin_methods()
    for config_cls in _METHODS.values():
        if config_cls.file_type() == peft_type:
            return config_cls
    return None
