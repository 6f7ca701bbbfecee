"""The base of every method config: a frozen, validated dataclass that round-trips through JSON exactly.

A method file subclasses `MethodConfig`, adds its hyperparameters, sets `card`, `study_lr` and the classes it
builds (`site_types`, `model_adapter_type`), and implements `build_site` (and, for methods that act on the model's
inputs, `build_model_adapter`). The core does everything else; the registry checks all of it when the method is
registered (core/registry.py). How the config is written to adapter_config.json is the job of its `file_format`
(io/formats.py), not of the config.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from torch import nn

from peftlab.core.sites import ModelAdapter, Site
from peftlab.core.targets import select_modules
from peftlab.core.typology import MethodCard
from peftlab.errors import ConfigError
from peftlab.io.formats import FileFormat

TargetSpec = str | tuple[str, ...] | None


def check(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError naming `field` when `condition` is false."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def check_range(value: float, field: str, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """Check low <= value <= high (open ends where asked), naming the field and the valid range."""
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"{field}={value!r} is out of range; valid range is {left}{low}, {high}{right}")


def _as_tuple(value: Any, field: str, item_type: type | tuple[type, ...] = str) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{field} must be a list of {getattr(item_type, '__name__', item_type)}, got {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, item_type) or isinstance(item, bool):
            raise ConfigError(f"{field} contains {item!r}; expected {getattr(item_type, '__name__', item_type)}")
    return items


def normalise_targets(value: Any, field: str) -> TargetSpec:
    """A target spec is None, a regex string (full match) or a tuple of names/suffixes."""
    if value is None or isinstance(value, str):
        if isinstance(value, str):
            _check_regex(value, field)
        return value
    return _as_tuple(value, field)


def _check_regex(pattern: str, field: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{field}={pattern!r} is not a valid regular expression: {err}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Fields shared by every method: where it attaches.

    targets: None (the method's default), "all-linear", a regex string (full match on the module name), or a list of
        exact module names or name suffixes (Hugging Face PEFT semantics: "query" matches "...attention.self.query").
    target_types: module class names to select, subclasses included (e.g. ("Conv2d",)); with `targets` too, both
        must match.
    layers: only modules inside these layer indices (the N in "...layer.N..." / "...layers.N..." / "...h.N...").
    exclude: a regex string (full match) or a list of names/suffixes never to adapt.
    modules_to_save: modules trained in full and saved with the adapter (e.g. a new classification head). None means
        automatic: a sequence/token classification model's head ("classifier", "score") is included.
    """

    card: ClassVar[MethodCard]
    # The peak learning rate the comparative study uses for this method (its short budgets: ~150-250 steps).
    study_lr: ClassVar[float]
    # The site classes build_site returns, and the model adapter class build_model_adapter returns (or None).
    site_types: ClassVar[tuple[type[Site], ...]] = ()
    model_adapter_type: ClassVar[type[ModelAdapter] | None] = None
    # How adapter_config.json and the tensors' file keys are written and read; the registry gives a method without
    # one peftlab's own layout (io/formats.NativeFormat).
    file_format: ClassVar[FileFormat]
    default_targets: ClassVar[TargetSpec] = None
    # Fields whose values become tensor dimensions (ints, or dicts of ints such as LoRA's rank_pattern): a load checks
    # them (see `sizes`) against the adapter file's tensor shapes before it builds anything.
    size_fields: ClassVar[tuple[str, ...]] = ()

    targets: TargetSpec = None
    target_types: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None
    exclude: TargetSpec = None
    modules_to_save: tuple[str, ...] | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> MethodConfig:  # noqa: PYI034  (Self needs Python 3.11)
        cls.check_field_names(kwargs)  # LoRA(rr=3): ConfigError naming the closest fields, not a bare TypeError
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self._set("targets", normalise_targets(self.targets, "targets"))
        self._set("target_types", _as_tuple(self.target_types, "target_types") or ())
        self._set("layers", _as_tuple(self.layers, "layers", int))
        self._set("exclude", normalise_targets(self.exclude, "exclude"))
        self._set("modules_to_save", _as_tuple(self.modules_to_save, "modules_to_save"))
        if self.layers is not None:
            for index in self.layers:
                check(index >= 0, "layers", f"layer indices must be >= 0, got {index}")
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        """Each plain field holds its annotated type: an int field takes no bool or float, a float field a finite
        number, a bool field only True/False, a dict field a mapping (other fields, strings included, are checked
        by the method's validate: some accept several forms)."""
        hints = _type_hints(type(self))
        for field in dataclasses.fields(self):
            value, hint = getattr(self, field.name), hints.get(field.name)
            allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            if value is None and type(None) in allowed:
                continue
            plain = [typing.get_origin(t) or t for t in allowed if t is not type(None)]
            if len(plain) != 1 or plain[0] not in (int, float, bool, dict):
                continue
            kind = plain[0]
            ok = {int: isinstance(value, int) and not isinstance(value, bool),
                  float: isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value),
                  bool: isinstance(value, bool), dict: isinstance(value, Mapping)}[kind]
            if not ok:
                expected = {int: "an integer", float: "a finite number", bool: "True or False", dict: "a dict"}[kind]
                raise ConfigError(f"{field.name}={value!r} must be {expected}")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def validate(self) -> None:
        """Method-specific checks; raise ConfigError (use `check` / `check_range`). Called on construction."""

    # --- what a method implements -------------------------------------------------------------------------------
    def supports(self, module: nn.Module) -> bool:
        """Whether this method can adapt `module` (a candidate site)."""
        raise NotImplementedError(f"{type(self).__name__} must implement supports()")

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> nn.Module:
        """The per-site adapter for `module` at `path` (see core.layer.SiteAdapter). `shared` is the model adapter."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_site()")

    def bias_only_sites(self, model: nn.Module, sites: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """Modules outside `sites` whose bias this method also trains, e.g. LoRA's bias="all". The core gives each a
        `BiasDelta` that files store as Hugging Face PEFT does: the absolute bias under "<path>.bias", the module left
        out of target_modules."""
        return {}

    def build_model_adapter(self, model: nn.Module, sites: dict[str, nn.Module]) -> nn.Module | None:
        """An optional model-level adapter (core.sites.ModelAdapter), given the modules `select_sites` chose:
        input-side methods put their tensors here, and sites may share state through it."""
        return None

    def sizes(self, model: nn.Module) -> dict[str, int]:
        """The tensor dimensions this config asks for on `model`, named for messages: the values of `size_fields`
        ("r", "rank_pattern['q_proj']"). A method that derives a size from another field (a bottleneck width from a
        reduction factor) adds it. Computing them allocates nothing."""
        out: dict[str, int] = {}
        for name in self.size_fields:
            value = getattr(self, name)
            if isinstance(value, Mapping):
                out.update({f"{name}[{key!r}]": size for key, size in value.items()})
            elif value is not None:
                out[name] = value
        return out

    def select_sites(self, model: nn.Module) -> dict[str, nn.Module]:
        """The modules this method adapts, by path. The default is the core's target selection over `targets`."""
        return select_modules(model, self)

    # --- serialisation ------------------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.card.id

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, with the method id under "method"."""
        out: dict[str, Any] = {"method": self.method}
        for field in dataclasses.fields(self):
            out[field.name] = _jsonable(getattr(self, field.name))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodConfig:
        """Inverse of `to_dict`. Called on the base class, dispatches on data["method"] through the registry."""
        data = dict(data)
        method_id = data.pop("method", None)
        if method_id is None:
            if cls is MethodConfig:
                raise ConfigError("MethodConfig.from_dict needs a 'method' id (e.g. {'method': 'lora', 'r': 8})")
            target = cls
        else:
            target = registered(method_id)
        if cls is not MethodConfig and not issubclass(target, cls):
            raise ConfigError(f"config is for method {method_id!r}, not {cls.card.id!r}")
        return target(**data)  # the constructor checks the field names

    @classmethod
    def check_field_names(cls, names: Iterable[str]) -> None:
        """ConfigError naming each unknown field, its closest valid names, and every valid one."""
        valid = sorted(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(names) - set(valid))
        if not unknown:
            return
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, valid, n=2)
            hints.append(f"{name!r} (did you mean {' or '.join(map(repr, close))}?)" if close else repr(name))
        raise ConfigError(f"unknown field(s) {', '.join(hints)} for method {cls.card.id!r}; valid: {valid}")

    def replace(self, **changes: Any) -> MethodConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# Method id -> config class, in registration order. Filled by core/registry.py, which checks each method's contract;
# kept here so that configs can be read back by id without this module importing the registry.
REGISTERED: dict[str, type[MethodConfig]] = {}


def registered(method_id: str) -> type[MethodConfig]:
    """The config class of a registered method id; ConfigError with the closest ids when unknown."""
    try:
        return REGISTERED[method_id]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(method_id), list(REGISTERED), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown method {method_id!r}{hint} Registered methods: {', '.join(REGISTERED)}") from None


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
