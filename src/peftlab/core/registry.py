"""The method registry: an ordered list of methods, each checked against the contract when it joins.

peftlab's own methods are listed, in order, in `peftlab.methods.BUILTIN` and registered when peftlab is imported;
a user's method joins with `peftlab.register(MyConfig)`. Registration checks everything the core will rely on and
names what is missing: a card, a study learning rate, the classes the method builds (their attach kind, abstract
methods, trait names: core/sites.py), the hooks that build them, and a file format.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from peftlab.core.config import REGISTERED, MethodConfig, registered
from peftlab.core.sites import check_model_adapter_class, check_site_class
from peftlab.core.typology import MethodCard
from peftlab.errors import ContractError
from peftlab.io.formats import FileFormat, NativeFormat

ConfigT = TypeVar("ConfigT", bound=type[MethodConfig])


def register(config_cls: ConfigT) -> ConfigT:
    """Add a method (its config class) to the registry, after checking its contract. Returns the class."""
    _check_contract(config_cls)
    method_id = config_cls.card.id
    existing = REGISTERED.get(method_id)
    if existing is not None and existing is not config_cls:
        raise ContractError(f"method id {method_id!r} is registered already (by {existing.__name__}); choose "
                            "another id")
    if "file_format" not in vars(config_cls):
        config_cls.file_format = NativeFormat(config_cls)
    REGISTERED[method_id] = config_cls
    return config_cls


def unregister(method_id: str) -> type[MethodConfig]:
    """Remove a method from the registry (a plug-in's, e.g. in tests); returns its config class."""
    cls = registered(method_id)
    del REGISTERED[method_id]
    return cls


def register_all(config_classes: Iterable[type[MethodConfig]]) -> None:
    for config_cls in config_classes:
        register(config_cls)


def _check_contract(cls: type) -> None:
    name = getattr(cls, "__name__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, MethodConfig)):
        raise ContractError(f"{name} is not a MethodConfig subclass; a method is a frozen dataclass deriving from "
                            "peftlab.MethodConfig")
    card = vars(cls).get("card")
    if not isinstance(card, MethodCard):
        raise ContractError(f"{name} declares no `card: ClassVar[MethodCard]` of its own (id, name, kind, ...)")
    method_id = card.id
    if not (isinstance(method_id, str) and method_id.isidentifier() and method_id == method_id.lower()):
        raise ContractError(f"{name}: method id {method_id!r} must be a lower-case identifier (e.g. 'my_lora')")
    lr = getattr(cls, "study_lr", None)
    if not isinstance(lr, float) or not lr > 0:
        raise ContractError(f"method {method_id!r} declares no study_lr (a positive float: the peak learning rate "
                            "`peftlab compare` uses for it), got {lr!r}")
    sites, shared = cls.site_types, cls.model_adapter_type
    if not sites and shared is None:
        raise ContractError(f"method {method_id!r} declares neither site_types nor model_adapter_type: it builds "
                            "nothing")
    for hook, needed in (("supports", bool(sites)), ("build_site", bool(sites)),
                         ("build_model_adapter", shared is not None)):
        if needed and _inherited_from_base(cls, hook):
            raise ContractError(f"method {method_id!r} declares what it builds but does not implement {hook}()")
    for site_cls in sites:
        check_site_class(site_cls, card.kind, card.mergeable, method_id)
    if shared is not None:
        check_model_adapter_class(shared, method_id)
    file_format = vars(cls).get("file_format")
    if file_format is not None and not (isinstance(file_format, FileFormat) and file_format.config_cls is cls):
        raise ContractError(f"method {method_id!r}: file_format must be a FileFormat made for {name}")


def _inherited_from_base(cls: type, hook: str) -> bool:
    """Whether `cls` leaves `hook` as MethodConfig's placeholder."""
    return getattr(cls, hook) is getattr(MethodConfig, hook)


def method_ids() -> list[str]:
    """The ids of every registered method, in registration order."""
    return list(REGISTERED)


def get_method(method_id: str) -> type[MethodConfig]:
    """The config class of a method id; ConfigError with the closest ids when unknown."""
    return registered(method_id)


def config_for(method_id: str, **fields: Any) -> MethodConfig:
    """Build a method config by id, e.g. config_for("lora", r=4); ConfigError on an unknown id or field."""
    return get_method(method_id)(**fields)


def formats_for(peft_type: str) -> list[FileFormat]:
    """The file formats of registered methods that write `peft_type` (a base method and its variants)."""
    return [cls.file_format for cls in REGISTERED.values() if cls.file_format.peft_type == peft_type]
