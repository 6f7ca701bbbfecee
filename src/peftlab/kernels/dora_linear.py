"""One fused autograd function for a frozen Linear plus DoRA (no dropout):

    y = s ⊙ (W x + c · B A x) + b,      s = m / ‖W + c · B A‖_row  (the norm is a constant for the gradient)

which equals base(x) + (s − 1) ⊙ (W x) + s ⊙ c · B A x without forming the base output, its bias-free copy and two
rescaled copies. Saved for backward: x (kept by the model anyway), the (N, r) factor and z = W x + c · B A x, the
one (N, d_out) tensor the magnitude's gradient needs:
    ∂m = Σ_N (g ⊙ z) / ‖·‖,   ∂z = g ⊙ s,   ∂x = ∂z W + c (∂z B) A,   ∂B = c (∂z)ᵀ(A x),   ∂A = c (∂z B)ᵀ x.
"""

from __future__ import annotations

from typing import Any

import torch


class DoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, magnitude: torch.Tensor, scaling: float) -> torch.Tensor:
        d_in, d_out = x.shape[-1], weight.shape[0]
        x2 = x.reshape(-1, d_in)  # (..., d_in) -> (N, d_in)
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.addmm(weight, lora_b, lora_a, alpha=scaling), dim=1)  # (d_out,)
        scale = magnitude / norm  # (d_out,)
        factor = x2 @ lora_a.T  # (N, r)
        z = x2 @ weight.T  # (N, d_out)
        z.addmm_(factor, lora_b.T, alpha=scaling)
        out = torch.addcmul(bias, z, scale) if bias is not None else z * scale  # (N, d_out)
        ctx.save_for_backward(x2, weight, lora_a, lora_b, factor, z, scale, norm)
        ctx.scaling, ctx.lead_shape = scaling, x.shape[:-1]
        return out.view(*x.shape[:-1], d_out)  # (N, d_out) -> (..., d_out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, lora_a, lora_b, factor, z, scale, norm = ctx.saved_tensors
        g2 = grad.reshape(-1, weight.shape[0])  # (..., d_out) -> (N, d_out)
        grad_m = (g2 * z).sum(0) / norm  # (d_out,)
        g_z = g2 * scale  # (N, d_out)
        g_factor = (g_z @ lora_b).mul_(ctx.scaling)  # (N, r)
        grad_b = (factor.T @ g_z).T.mul_(ctx.scaling)  # (r, N) @ (N, d_out) -> (d_out, r)
        grad_a = g_factor.T @ x2  # (r, d_in)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g_z @ weight).addmm_(g_factor, lora_a).view(*ctx.lead_shape, x2.shape[-1])
        return grad_x, None, None, grad_a, grad_b, grad_m, None
