"""Training objectives that can be attached to any adapted model (`model.add_objective(name, objective)`), by id in
`OBJECTIVES` for the study's `<method>+<objective>` names (e.g. `lora+deft`)."""

from peftlab.core.objectives import HookedObjective, Objective
from peftlab.objectives.balora import BALoRA
from peftlab.objectives.deft import DEFT, activation_density

OBJECTIVES: dict[str, type[Objective]] = {"deft": DEFT, "balora": BALoRA}

__all__ = ["DEFT", "OBJECTIVES", "BALoRA", "HookedObjective", "Objective", "activation_density"]
