"""Combining LoRA updates ΔW_i = s_i · B_i A_i (B_i: (d_out, r_i), A_i: (r_i, k)) with weights w_i into one pair (B, A)
whose scaling is 1:

    cat            A = [w_1 s_1 A_1; ...; w_n s_n A_n], B = [B_1, ..., B_n]: B A = Σ_i w_i ΔW_i exactly, rank Σ_i r_i
    <merge>_svd    M = merge(ΔW_1..ΔW_n; w) (compose/merging.py) ≈ U_k S_k V_kᵀ; B = U_k S_k, A = V_kᵀ: the best rank-k
                   approximation of M (Eckart–Young); "svd" is linear_svd, i.e. of Σ_i w_i ΔW_i
    factorwise     A = merge(A_i; ±√|w_i s_i|), B = merge(B_i; √|w_i s_i|) (the sign on A's side), for adapters of one
                   rank: Hugging Face PEFT's "linear", "ties", ... on the factors. B A ≠ Σ_i w_i ΔW_i in general, so
                   this is a cheap, rough approximation; cat and svd are exact up to the chosen rank.

k is d_in for a Linear, d_in · kernel size for a convolution and the vocabulary for an Embedding (ΔW = B A, (D, V)).
A site one of the adapters does not adapt contributes ΔW_i = 0 (cat, svd) or is left out (factorwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from peftlab.compose.merging import merge


@dataclass(frozen=True)
class LowRank:
    """One adapter's update at one site: ΔW = scaling · b a."""

    a: torch.Tensor  # (r, k)
    b: torch.Tensor  # (d_out, r)
    scaling: float

    def delta(self) -> torch.Tensor:
        return self.scaling * (self.b @ self.a)  # (d_out, k)


def concatenate(parts: Sequence[LowRank | None], weights: Sequence[float], rank: int) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """cat: (a (rank, k), b (d_out, rank)); the rows and columns past Σ r_i of the present parts stay zero."""
    present = [(p, w) for p, w in zip(parts, weights) if p is not None]
    a = torch.cat([w * p.scaling * p.a for p, w in present])  # (Σ r_i, k)
    b = torch.cat([p.b for p, _ in present], dim=1)  # (d_out, Σ r_i)
    return _pad(a, b, rank)


def truncated_svd(delta: torch.Tensor, rank: int, clamp: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a (rank, k), b (d_out, rank)) with b a the best rank-`rank` approximation of delta (d_out, k).

    `clamp` (a quantile in (0, 1]) clips the entries of both factors to ±that quantile of their values, as Hugging
    Face PEFT's svd_clamp does.
    """
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)  # (d_out, q), (q,), (q, k); q = min(d_out, k)
    keep = min(rank, s.numel())
    b = (u[:, :keep] * s[:keep]).to(delta.dtype)  # (d_out, keep)
    a = vh[:keep].to(delta.dtype)  # (keep, k)
    if clamp is not None:
        high = torch.quantile(torch.cat([b.flatten(), a.flatten()]).float(), clamp).item()
        b, a = b.clamp(-high, high), a.clamp(-high, high)
    return _pad(a, b, rank)


def factorwise(parts: Sequence[LowRank | None], weights: Sequence[float], how: str, density: float,
               sign_method: str, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the A's and the B's separately with the weights ±√|w_i s_i| and √|w_i s_i| (see the module docstring)."""
    present = [(p, w * p.scaling) for p, w in zip(parts, weights) if p is not None]
    root = [math.sqrt(abs(ws)) for _, ws in present]
    signed = [r if ws >= 0 else -r for r, (_, ws) in zip(root, present)]
    a = merge([p.a for p, _ in present], signed, how, density, sign_method, generator)
    b = merge([p.b for p, _ in present], root, how, density, sign_method, generator)
    return a, b


def _pad(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad a (r, k) and b (d_out, r) to `rank`."""
    missing = rank - a.shape[0]
    if missing > 0:
        a = torch.cat([a, a.new_zeros(missing, a.shape[1])])  # (rank, k)
        b = torch.cat([b, b.new_zeros(b.shape[0], missing)], dim=1)  # (d_out, rank)
    return a, b
