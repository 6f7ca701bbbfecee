"""A run's spec from its JSON form: a compare run (plan.RunSpec) or a continual-learning run (continual.py)."""

from __future__ import annotations

from typing import Any

from peftlab.study.plan import RunSpec


def load_spec(data: dict[str, Any]) -> Any:
    """The spec that `spec.to_dict()` wrote (a continual-learning spec says so in its "kind")."""
    if data.get("kind") == "continual":
        from peftlab.study.continual import ContinualRunSpec

        return ContinualRunSpec.from_dict(data)
    return RunSpec.from_dict(data)
