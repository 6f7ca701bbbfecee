"""Placement as a study (after "Train More Parameters But Mind Their Placement"): one low-rank method (LoRA) with
the same parameter budget put on the attention projections, on the feed-forward layers, on both, and on the early
or the late half of the blocks. Each variant is an ordinary study method (explicit target modules and the rank
that spends the budget there), so it runs, records and resumes like any compare run.

The budget is what rank `base_rank` costs on every attention and feed-forward layer of the model; a variant gets
round(budget / its per-rank cost), so budgets match up to rounding (the records hold the exact counts).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from torch import nn

from peftlab.study.methods import StudyMethod
from peftlab.study.tasks import Task

PLACEMENT_METHOD = "lora"
VARIANTS = ("attention", "feed-forward", "both", "early", "late")
ATTENTION_WORDS = {"attention", "attn", "self_attn", "self", "query", "key", "value", "q_proj", "k_proj", "v_proj",
                   "o_proj", "c_attn", "out_proj", "qkv"}
HEADS = ("classifier", "score", "lm_head", "pooler", "_fc", "head")


@dataclasses.dataclass(frozen=True)
class Site:
    """A layer LoRA can adapt: its path, block index, region, and parameters per unit of rank."""

    path: str
    block: int
    region: str  # "attention" or "feed-forward"
    cost_per_rank: int


def block_index(path: str) -> int | None:
    """The first numeric component of a module path: the block ("encoder.layer.3.attention..." -> 3)."""
    return next((int(part) for part in path.split(".") if part.isdigit()), None)


def sites_of(model: nn.Module, target_pattern: str | None = None) -> list[Site]:
    """Linear layers (and convolutions matching `target_pattern`) inside numbered blocks, heads excluded."""
    found = []
    for path, module in model.named_modules():
        block = block_index(path)
        parts = set(path.split("."))
        if block is None or parts & set(HEADS):
            continue
        if isinstance(module, nn.Linear):
            cost = module.in_features + module.out_features
        elif isinstance(module, nn.Conv2d) and target_pattern and re.fullmatch(target_pattern, path):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            cost = module.in_channels // module.groups * kernel + module.out_channels
        else:
            continue
        region = "attention" if parts & ATTENTION_WORDS else "feed-forward"
        found.append(Site(path, block, region, cost))
    return found


def variant_sites(sites: list[Site]) -> dict[str, list[Site]]:
    """The sites of each variant; attention / feed-forward only when the model has both (a CNN has no attention)."""
    blocks = sorted({s.block for s in sites})
    half = blocks[len(blocks) // 2] if blocks else 0
    out = {"both": sites, "early": [s for s in sites if s.block < half], "late": [s for s in sites if s.block >= half]}
    attention = [s for s in sites if s.region == "attention"]
    if attention and len(attention) < len(sites):
        out["attention"] = attention
        out["feed-forward"] = [s for s in sites if s.region == "feed-forward"]
    return {name: out[name] for name in VARIANTS if out.get(name)}


def placement_methods(task: Task, method: StudyMethod, base_rank: int = 8) -> list[StudyMethod]:
    """One study method per placement variant of `method` (a method with a rank `r`) on the task's model."""
    fields = task.fields_for(method.method_id)
    pattern = fields.get("targets") if isinstance(fields.get("targets"), str) else None
    sites = sites_of(task.build_model(), pattern)
    variants = variant_sites(sites)
    budget = base_rank * _cost(sites)
    return [dataclasses.replace(method, label=f"{method.label}@{name}",
                                fields={**method.fields, "targets": [s.path for s in chosen],
                                        "r": max(1, round(budget / _cost(chosen)))})
            for name, chosen in variants.items()]


def _cost(sites: Iterable[Site]) -> int:
    return sum(s.cost_per_rank for s in sites)
