"""The registry: an explicit ordered list, and a contract checked at registration that names what is missing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import peftlab
from peftlab.core.layer import BaseCall
from peftlab.core.sites import InsertedSite, WeightDeltaSite
from peftlab.methods import BUILTIN


class Scale(WeightDeltaSite):
    def __init__(self, module: nn.Linear) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(module.out_features))

    def forward(self, x: Any, base: BaseCall) -> torch.Tensor:
        return base(x) * self.scale

    def merge(self, module: nn.Module) -> None:
        module.weight.mul_(self.scale.view(-1, 1))  # (d_out,) -> (d_out, 1)

    def unmerge(self, module: nn.Module) -> None:
        module.weight.div_(self.scale.view(-1, 1))


def method(method_id: str = "scale_test", *, kind: peftlab.AttachKind = peftlab.AttachKind.WEIGHT_DELTA,
           mergeable: bool = True, sites: tuple = (Scale,), **members: Any) -> type[peftlab.MethodConfig]:
    """A config class built the documented way, with `members` replacing or removing (value None) its parts."""
    card = peftlab.MethodCard(id=method_id, name="Scale", kind=kind, inserted_at="linear", form="vector",
                              integration="multiplication", param_formula="d_out", mergeable=mergeable)
    body: dict[str, Any] = {
        "__annotations__": {"card": ClassVar, "study_lr": ClassVar, "site_types": ClassVar},
        "card": card, "study_lr": 1e-2, "site_types": sites,
        "supports": lambda self, module: isinstance(module, nn.Linear),
        "build_site": lambda self, module, path, shared: Scale(module),
    }
    body.update(members)
    body = {k: v for k, v in body.items() if v is not None}
    return dataclasses.dataclass(frozen=True, kw_only=True)(type("ScaleConfig", (peftlab.MethodConfig,), body))


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for method_id in ids:
        if method_id in peftlab.method_ids():
            peftlab.unregister(method_id)


def test_the_registry_is_the_builtin_list_in_order() -> None:
    assert peftlab.method_ids()[:len(BUILTIN)] == [cls.card.id for cls in BUILTIN]
    assert isinstance(peftlab.methods.BUILTIN, tuple)  # peftlab.methods is the subpackage, not a function
    from peftlab.methods.sparse import select_by_gradient

    assert peftlab.methods.sparse.select_by_gradient is select_by_gradient


def test_ids_that_contain_other_ids_are_fine(cleanup: list[str]) -> None:
    for method_id in ("qlora", "adalora"):
        peftlab.register(method(method_id))
        cleanup.append(method_id)
    assert {"lora", "qlora", "adalora"} <= set(peftlab.method_ids())


@pytest.mark.parametrize(("members", "message"), [
    ({"study_lr": None}, "declares no study_lr"),
    ({"study_lr": 0.0}, "declares no study_lr"),
    ({"build_site": None}, "does not implement build_site"),
    ({"site_types": ()}, "declares neither site_types nor model_adapter_type"),
    ({"site_types": (nn.Linear,)}, "is not a peftlab.core.sites.Site"),
    ({"card": None}, "declares no `card"),
])
def test_a_method_missing_a_part_is_refused_by_name(members: dict[str, Any], message: str) -> None:
    with pytest.raises(peftlab.ContractError, match=message):
        peftlab.register(method(**members))
    assert "scale_test" not in peftlab.method_ids()


def test_a_site_missing_a_required_method_is_refused_by_name() -> None:
    class NoUnmerge(WeightDeltaSite):
        def forward(self, x: Any, base: BaseCall) -> Any:
            return base(x)

        def merge(self, module: nn.Module) -> None:
            pass

    with pytest.raises(peftlab.ContractError, match="does not implement unmerge"):
        peftlab.register(method(sites=(NoUnmerge,)))


def test_a_misspelt_trait_is_refused_with_the_right_name() -> None:
    class Misspelt(Scale):
        additve = True

    with pytest.raises(peftlab.ContractError, match="'additve'.*did you mean 'additive'"):
        peftlab.register(method(sites=(Misspelt,)))


def test_a_site_of_another_attach_kind_is_refused() -> None:
    class Inserted(InsertedSite):
        def forward(self, x: Any, base: BaseCall) -> Any:
            return base(x)

    with pytest.raises(peftlab.ContractError, match="must derive from WeightDeltaSite"):
        peftlab.register(method(sites=(Inserted,), mergeable=False))


def test_a_mergeable_card_needs_mergeable_sites() -> None:
    class Inserted(InsertedSite):
        def forward(self, x: Any, base: BaseCall) -> Any:
            return base(x)

    with pytest.raises(peftlab.ContractError, match="mergeable"):
        peftlab.register(method(kind=peftlab.AttachKind.INSERTED_MODULE, sites=(Inserted,)))


def test_an_id_registered_twice_is_refused(cleanup: list[str]) -> None:
    peftlab.register(method())
    cleanup.append("scale_test")
    with pytest.raises(peftlab.ContractError, match="registered already"):
        peftlab.register(method())
    with pytest.raises(peftlab.ContractError, match="lower-case identifier"):
        peftlab.register(method("Scale-Test"))


def test_build_site_returning_an_undeclared_class_is_refused(cleanup: list[str]) -> None:
    class Other(Scale):
        pass

    peftlab.register(method(sites=(Other,)))  # declares Other, build_site returns Scale
    cleanup.append("scale_test")
    base = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(peftlab.ContractError, match="returned a Scale"):
        peftlab.adapt(base, peftlab.config_for("scale_test", targets=["0"]))
    assert not any(p.requires_grad is False for p in base.parameters())  # the failed adapt left the base as it was


def test_unknown_fields_name_the_closest_one_on_any_config_class() -> None:
    with pytest.raises(peftlab.ConfigError, match="did you mean 'r'"):
        peftlab.LoRA(rr=3)
    unregistered = method("not_registered")
    with pytest.raises(peftlab.ConfigError, match="did you mean 'targets'"):
        unregistered(tagets=["x"])
