"""Merging n task tensors τ_1..τ_n (same shape) with weights w_1..w_n into one tensor.

    linear            Σ_i w_i τ_i                                            (task arithmetic, Ilharco et al. 2023)
    magnitude_prune   Σ_i w_i trim_ρ(τ_i)
    ties              Σ_{i: sign τ̂_i = γ} w_i τ̂_i / #{i: sign τ̂_i = γ},  τ̂_i = trim_ρ(τ_i)   (Yadav et al. 2023)
    dare_linear       Σ_i w_i drop_ρ(τ_i)                                    (Yu et al. 2023)
    dare_ties         ties with drop_ρ instead of trim_ρ

trim_ρ keeps the ⌊ρ · numel⌋ entries of largest magnitude and zeroes the rest; drop_ρ keeps each entry with
probability ρ and rescales kept ones by 1 / ρ (so E[drop_ρ(τ)] = τ). ρ is the density. The elected sign γ of an entry
is the sign of Σ_i τ̂_i ("total") or of Σ_i sign(τ̂_i) ("frequency"), +1 on a tie; an entry that no task agrees with
merges to 0. These are the definitions Hugging Face PEFT's `add_weighted_adapter` uses, so results agree with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PRUNING = ("magnitude_prune", "ties", "dare_linear", "dare_ties")
MERGES = ("linear", *PRUNING)
SIGN_METHODS = ("total", "frequency")


def trim(task: torch.Tensor, density: float) -> torch.Tensor:
    """trim_ρ: the ⌊ρ · numel⌋ entries of largest magnitude, the rest zeroed."""
    if density >= 1.0:
        return task
    keep = int(density * task.numel())
    flat = task.reshape(-1)
    kept = torch.zeros_like(flat)
    top = flat.abs().topk(keep).indices
    kept[top] = flat[top]
    return kept.view_as(task)


def drop(task: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """drop_ρ: each entry kept with probability ρ and rescaled by 1 / ρ (`generator` on task's device, or None)."""
    if density >= 1.0:
        return task
    kept = torch.rand(task.shape, generator=generator, device=task.device) < density
    return torch.where(kept, task / density, torch.zeros((), dtype=task.dtype, device=task.device))


def elected_sign_agreement(tasks: torch.Tensor, sign_method: str) -> torch.Tensor:
    """(n, ...) bool: where task i's sign equals the elected sign γ of the entry."""
    signs = tasks.sign()
    votes = tasks.sum(0) if sign_method == "total" else signs.sum(0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(tasks.dtype)
    return signs == elected


def merge(tasks: Sequence[torch.Tensor], weights: Sequence[float], how: str, density: float = 1.0,
          sign_method: str = "total", generator: torch.Generator | None = None) -> torch.Tensor:
    """One tensor from `tasks` by `how` (one of MERGES); see the module docstring for each rule."""
    if how in ("magnitude_prune", "ties"):
        tasks = [trim(t, density) for t in tasks]
    elif how in ("dare_linear", "dare_ties"):
        tasks = [drop(t, density, generator) for t in tasks]
    stacked = torch.stack(list(tasks))  # (n, ...)
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    weighted = stacked * w.view(-1, *([1] * (stacked.dim() - 1)))  # (n,) -> (n, 1, ...)
    if how not in ("ties", "dare_ties"):
        return weighted.sum(0)
    agree = elected_sign_agreement(stacked, sign_method)
    return (weighted * agree).sum(0) / agree.sum(0).clamp(min=1)
