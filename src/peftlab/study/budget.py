"""The user's budget: `params=1%`, `params=100k`, `memory=2000MB`, `time=60s`; a method fits if its measured
means are within every limit."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from peftlab.study.errors import StudyError

_UNITS = {
    "params": {"": 1, "k": 1e3, "m": 1e6, "b": 1e9},
    "memory": {"": 1, "mb": 1, "gb": 1e3, "kb": 1e-3, "mib": 1.048576, "gib": 1073.741824},
    "time": {"": 1, "s": 1, "ms": 1e-3, "m": 60, "min": 60, "h": 3600},
}
# budget kind -> (summary field it limits, unit shown)
FIELDS = {"params": ("trainable_params", "trainable parameters"), "params%": ("trainable_percent", "% trainable"),
          "memory": ("peak_memory_mb", "MB peak memory"), "time": ("train_seconds", "s training time")}


@dataclasses.dataclass(frozen=True)
class Budget:
    """One limit: `field` of a method's summary must be <= `limit`."""

    kind: str  # params, params%, memory, time
    limit: float
    text: str

    @property
    def field(self) -> str:
        return FIELDS[self.kind][0]

    def allows(self, summary: Mapping[str, Any]) -> bool:
        value = summary.get(self.field)
        return value is not None and value <= self.limit

    def describe(self) -> str:
        return f"{self.limit:g} {FIELDS[self.kind][1]}"


def parse_budget(text: str) -> Budget:
    """`params=1%` | `params=250k` | `memory=2000MB` | `memory=2GB` | `time=60s` | `time=2m`."""
    key, sep, value = text.strip().partition("=")
    key = key.strip().lower()
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([A-Za-z%]*)\s*", value)
    if not sep or key not in _UNITS or match is None:
        raise StudyError(f"--budget {text!r}: expected params=1% / params=100k, memory=2000MB or time=60s")
    number, unit = float(match.group(1)), match.group(2).lower()
    if key == "params" and unit == "%":
        return Budget("params%", number, text)
    if unit not in _UNITS[key]:
        raise StudyError(f"--budget {text!r}: unknown unit {unit!r} for {key}; use one of "
                         f"{', '.join(u or '(none)' for u in _UNITS[key])}" + (", %" if key == "params" else ""))
    return Budget(key, number * _UNITS[key][unit], text)


def parse_budgets(items: Iterable[str]) -> list[Budget]:
    """Every budget of repeated or comma-separated --budget options."""
    return [parse_budget(p) for item in items for p in item.split(",") if p.strip()]
