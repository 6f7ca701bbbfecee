"""The study's method list: study names ("adapter-tiny", "sparse-40", "lora:r=16") -> registry id + fields + LR.

A study name is either one of `SURVEY_METHODS` or `<method id>[:field=value[:field=value...]]` for any registered
method. The method id and its fields are checked when the study is planned, so a typo stops the study before any run
starts; each run builds its config again in its worker, with the task's fields (e.g. a CNN's head) added.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

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

# Peak learning rate per registry id for the study's short budgets (~150-250 steps of batch 16); tuned on the
# default study with a x2.5 sweep (see docs/study.md). Methods that train few, multiplicative or input-side
# parameters need more.
DEFAULT_LR: dict[str, float] = {
    "full": 1e-4,
    "adapter": 3e-3,
    "lora": 5e-3,
    "dora": 5e-3,
    "loreft": 5e-3,
    "prefix": 3e-2,
    "prompt": 3e-2,
    "sparse": 3e-4,
    "bitfit": 5e-3,
    "ia3": 3e-2,
}
FALLBACK_LR = 1e-3


def survey_method_names() -> list[str]:
    """Every method the survey runs: the study names of SURVEY_METHODS, then each registered method whose id no
    entry there uses (under its id, with its defaults). A method added to the table or to the registry joins the
    survey without any other edit."""
    import peftlab

    covered = {method_id for method_id, _ in SURVEY_METHODS.values()}
    return [*SURVEY_METHODS, *(m for m in peftlab.methods() if m not in covered)]


@dataclasses.dataclass(frozen=True)
class StudyMethod:
    """One method of a study: its name in tables, its registry id, config fields, and learning rate."""

    label: str
    method_id: str
    fields: Mapping[str, Any]
    lr: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "method_id": self.method_id, "fields": dict(self.fields), "lr": self.lr}


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
    if name in SURVEY_METHODS:
        method_id, fields = SURVEY_METHODS[name]
    else:
        method_id, *assignments = name.split(":")
        fields = {}
        for item in assignments:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise StudyError(f"method {name!r}: expected field=value after ':', got {item!r} "
                                 "(e.g. lora:r=16:alpha=32)")
            fields[key] = parse_value(value)
    overrides = lr_overrides or {}
    lr = overrides.get(name, overrides.get(method_id, DEFAULT_LR.get(method_id, FALLBACK_LR)))
    method = StudyMethod(label=name, method_id=method_id, fields=dict(fields), lr=float(lr))
    try:
        build_config(method, {})  # checked now; each run builds it again with its task's fields
    except ConfigError as err:
        raise StudyError(f"--methods {name!r}: {err}") from None
    return method


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
