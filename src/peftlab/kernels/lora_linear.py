"""One fused autograd function for a frozen Linear plus LoRA:  y = x Wᵀ + b + s · (m ⊙ x / (1 − p)) Aᵀ Bᵀ

Against the plain composition of modules (dropout, two linears, a scale, an add) it
  - accumulates the low-rank update into the base output in place (one addmm, no (N, d_out) temporaries),
  - applies the scale s to the small (N, r) factor instead of the (N, d_out) output,
  - saves for backward only x (which the model keeps anyway), the (N, r) factor and, with dropout, a boolean mask
    instead of the float dropped copy of x,
  - computes the input gradient in one pass: ∂x = g W + (m / (1 − p)) ⊙ (s · g B) A.
Valid when the base weight and bias are frozen; the method file falls back to the plain path otherwise.
"""

from __future__ import annotations

from typing import Any

import torch


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, mask: torch.Tensor | None, keep: float) -> torch.Tensor:
        d_in, d_out = x.shape[-1], weight.shape[0]
        x2 = x.reshape(-1, d_in)  # (..., d_in) -> (N, d_in)
        if mask is None:
            factor = x2 @ lora_a.T  # (N, r)
        else:  # the 1/keep rescale is applied on the small (N, r) side, never on a full-size tensor
            factor = (x2 * mask.reshape(-1, d_in)) @ lora_a.T
            factor.mul_(1.0 / keep)
        out = torch.addmm(bias, x2, weight.T) if bias is not None else x2 @ weight.T  # (N, d_out)
        out.addmm_(factor, lora_b.T, alpha=scaling)
        ctx.save_for_backward(x2, weight, lora_a, lora_b, factor, mask)
        ctx.scaling, ctx.keep, ctx.lead_shape = scaling, keep, x.shape[:-1]
        return out.view(*x.shape[:-1], d_out)  # (N, d_out) -> (..., d_out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, lora_a, lora_b, factor, mask = ctx.saved_tensors
        d_in = x2.shape[-1]
        g2 = grad.reshape(-1, weight.shape[0])  # (..., d_out) -> (N, d_out)
        g_factor = (g2 @ lora_b).mul_(ctx.scaling)  # (N, r): gradient reaching the low-rank factor
        grad_b = (factor.T @ g2).T.mul_(ctx.scaling)  # (r, N) @ (N, d_out) -> (r, d_out) -> (d_out, r); faster than gᵀ f
        mask2 = None if mask is None else mask.reshape(-1, d_in)
        if mask2 is not None:
            g_factor.mul_(1.0 / ctx.keep)  # (N, r): the dropout rescale, on the small side
        grad_a = g_factor.T @ (x2 if mask2 is None else x2 * mask2)  # (r, d_in)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = g2 @ weight  # (N, d_in)
            if mask2 is None:
                grad_x.addmm_(g_factor, lora_a)
            else:
                grad_x.add_((g_factor @ lora_a).mul_(mask2))
            grad_x = grad_x.view(*ctx.lead_shape, d_in)
        return grad_x, None, None, grad_a, grad_b, None, None, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, dropout: float, training: bool,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Frozen linear plus LoRA in one autograd node. `mask` (bool, x's shape) may be given to share or fix it."""
    keep = 1.0 - dropout
    if mask is None and training and dropout > 0:
        mask = torch.rand_like(x) < keep  # (..., d_in) bool; several times faster than bernoulli_ on CPU
    if mask is None:
        keep = 1.0
    return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling, mask, keep)
