"""The study's method list: study names ("adapter-tiny", "sparse-40", "lora:r=16") -> registry id + fields + LR.

A study name is either one of `SURVEY_METHODS` or `<method id>[:field=value[:field=value...]]` for any registered
method, optionally followed by training objectives: `lora+deft`, `lora:r=16+deft:weight=0.5` (peftlab.objectives).
The method id and its fields are checked when the study is planned, so a typo stops the study before any run starts;
each run builds its config again in its worker, with the task's fields (e.g. a CNN's head) added.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from peftlab.core.registry import get_method, method_ids
from peftlab.errors import ConfigError
from peftlab.study.errors import StudyError

# study name -> (registry id, fields). The survey's table, in its order.
SURVEY_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full", {}),
    "adapter-tiny": ("adapter", {"preset": "tiny"}),
    "adapter-small": ("adapter", {"preset": "small"}),
    "lora": ("lora", {}),
    "dora": ("dora", {}),
    "loreft": ("loreft", {}),
    "prefix": ("prefix", {}),
    "prompt": ("prompt", {}),
    "sparse-40": ("sparse", {"pruning": 0.4}),
    "sparse-80": ("sparse", {"pruning": 0.8}),
    "bitfit": ("bitfit", {}),
    "ia3": ("ia3", {}),
}

# Each method's peak learning rate for the study's short budgets (~150-250 steps of batch 16) is its config's
# `study_lr`, tuned on the default study with a x2.5 sweep (see docs/study.md). Methods that train few,
# multiplicative or input-side parameters need more.


def survey_method_names() -> list[str]:
    """Every method the survey runs: the study names of SURVEY_METHODS, then each registered method whose id no
    entry there uses (under its id, with its defaults). A method added to the table or to the registry joins the
    survey without any other edit."""
    covered = {method_id for method_id, _ in SURVEY_METHODS.values()}
    return [*SURVEY_METHODS, *(m for m in method_ids() if m not in covered), *SURVEY_WITH_OBJECTIVES]


# Methods with a training objective attached that the survey runs too (DEFT: what lower activation density costs).
SURVEY_WITH_OBJECTIVES = ("lora+deft",)


@dataclasses.dataclass(frozen=True)
class StudyMethod:
    """One method of a study: its name in tables, its registry id, config fields, and learning rate."""

    label: str
    method_id: str
    fields: Mapping[str, Any]
    lr: float
    objectives: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # (objective id, fields) attached to the model

    def to_dict(self) -> dict[str, Any]:
        out = {"label": self.label, "method_id": self.method_id, "fields": dict(self.fields), "lr": self.lr}
        if self.objectives:  # only when present: the run ids of studies without objectives stay as they were
            out["objectives"] = [[name, dict(fields)] for name, fields in self.objectives]
        return out


def parse_value(text: str) -> Any:
    """A field value from the command line: JSON (1, 0.5, true, "x", [..]) or `a|b` (a list) or a bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.split("|") if "|" in text else text


def parse_method(name: str, lr_overrides: Mapping[str, float] | None = None) -> StudyMethod:
    """`name` as a survey name or `id:field=value:...`; the LR is an override (by name, then id) or the default."""
    name = name.strip()
    if not name:
        raise StudyError("empty method name in --methods")
    method_part, *objective_parts = name.split("+")
    if method_part in SURVEY_METHODS:
        method_id, fields = SURVEY_METHODS[method_part]
    else:
        method_id, fields = _id_and_fields(method_part, name)
    objectives = tuple(_id_and_fields(part, name) for part in objective_parts)
    overrides = lr_overrides or {}
    try:
        lr = overrides[name] if name in overrides else overrides.get(method_id, get_method(method_id).study_lr)
        method = StudyMethod(label=name, method_id=method_id, fields=dict(fields), lr=float(lr),
                             objectives=objectives)
        build_config(method, {})  # checked now; each run builds it again with its task's fields
        build_objectives(method)
    except (ConfigError, TypeError) as err:
        raise StudyError(f"--methods {name!r}: {err}") from None
    return method


def _id_and_fields(text: str, name: str) -> tuple[str, dict[str, Any]]:
    """"lora:r=16:alpha=32" -> ("lora", {"r": 16, "alpha": 32})."""
    identifier, *assignments = text.split(":")
    fields = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StudyError(f"method {name!r}: expected field=value after ':', got {item!r} (e.g. lora:r=16:alpha=32)")
        fields[key] = parse_value(value)
    return identifier, fields


def build_objectives(method: StudyMethod) -> dict[str, Any]:
    """The objectives of `method`, by id (peftlab.objectives.OBJECTIVES), built from their fields."""
    from peftlab.objectives import OBJECTIVES

    built = {}
    for objective_id, fields in method.objectives:
        if objective_id not in OBJECTIVES:
            raise StudyError(f"--methods {method.label!r}: unknown objective {objective_id!r}; known: "
                             f"{', '.join(OBJECTIVES)}")
        built[objective_id] = OBJECTIVES[objective_id](**fields)
    return built


def parse_lr_overrides(items: list[str]) -> dict[str, float]:
    """`--lr lora=2e-3 --lr full=5e-5,bitfit=1e-3` -> {"lora": 0.002, ...}; a bare number sets "*" (all methods)."""
    out: dict[str, float] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = part.rpartition("=")
            try:
                out[key if sep else "*"] = float(value)
            except ValueError:
                raise StudyError(f"--lr {part!r}: expected method=value (e.g. lora=2e-3) or a number") from None
    return out


def resolve_methods(names: list[str], lr_overrides: Mapping[str, float]) -> list[StudyMethod]:
    """The study's methods in the given order; `lr_overrides["*"]` (if any) applies to methods not named."""
    default = lr_overrides.get("*")
    methods = []
    for name in names:
        method = parse_method(name, lr_overrides)
        named = name in lr_overrides or method.method_id in lr_overrides
        if default is not None and not named:
            method = dataclasses.replace(method, lr=default)
        methods.append(method)
    if not methods:
        raise StudyError("--methods is empty; name at least one method, e.g. --methods lora,full")
    labels = [m.label for m in methods]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise StudyError(f"--methods lists {duplicates} more than once")
    known = set(names) | {m.method_id for m in methods} | {"*"}
    unused = sorted(set(lr_overrides) - known)
    if unused:
        raise StudyError(f"--lr names {unused}, which the study does not run (--methods: {', '.join(names)}); fix "
                         "the name or add the method")
    return methods


def build_config(method: StudyMethod, task_fields: Mapping[str, Any]) -> Any:
    """The peftlab method config of `method` on a task (task fields such as modules_to_save come first)."""
    import peftlab

    fields = {**task_fields, **method.fields}
    return peftlab.config_for(method.method_id, **fields)
