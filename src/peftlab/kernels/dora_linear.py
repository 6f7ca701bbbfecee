"""One fused autograd function for a frozen Linear plus DoRA, with or without dropout:

    y = W x + b + (s − 1) ⊙ W x' + s ⊙ c · B A x',     s = m / ‖W + c · B A‖_row  (a constant for the gradient)

where x' = m_drop ⊙ x / keep is the dropped input (Hugging Face PEFT's definition). Without dropout x' = x and this is
y = s ⊙ z + b with z = W x + c · B A x: one large product instead of the base output, its bias-free copy and two
rescaled copies. With dropout it takes the two large products the definition needs (W x and W x'), and keeps no
rescaled copies. Saved for backward: x (kept by the model anyway), the dropout mask (kernels/dropout_mask.py), the
(N, r) factor A x' and z = W x' + c · B A x', the one (N, d_out) tensor the magnitude's gradient needs:
    ∂m = Σ_N (g ⊙ z) / ‖·‖,   ∂z = g ⊙ s,   ∂(W x') = g ⊙ (s − 1),   ∂x' = ∂(W x') W + c (∂z B) A,
    ∂x = g W + (m_drop / keep) ⊙ ∂x'    (without dropout: ∂x = ∂z W + c (∂z B) A),
    ∂B = c (∂z)ᵀ(A x'),   ∂A = c (∂z B)ᵀ x'.
"""

from __future__ import annotations

from typing import Any

import torch

from peftlab.kernels.dropout_mask import DropoutMask, pack, unpack


class DoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, magnitude: torch.Tensor, scaling: float,
                mask: DropoutMask | None = None) -> torch.Tensor:
        d_in, d_out = x.shape[-1], weight.shape[0]
        x2 = x.reshape(-1, d_in)  # (..., d_in) -> (N, d_in)
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.addmm(weight, lora_b, lora_a, alpha=scaling), dim=1)  # (d_out,)
        scale = magnitude / norm  # (d_out,)
        dropped = x2 if mask is None else mask.apply(x2).mul_(1.0 / mask.keep)  # (N, d_in)
        factor = dropped @ lora_a.T  # (N, r)
        w_dropped = dropped @ weight.T  # (N, d_out)
        if mask is None:
            z = w_dropped.addmm_(factor, lora_b.T, alpha=scaling)  # W x + c B A x
            out = torch.addcmul(bias, z, scale) if bias is not None else z * scale
        else:  # W x + b + s ⊙ z − W x'
            z = torch.addmm(w_dropped, factor, lora_b.T, alpha=scaling)  # W x' + c B A x'
            out = torch.addmm(bias, x2, weight.T) if bias is not None else x2 @ weight.T
            out.addcmul_(z, scale).sub_(w_dropped)
        ctx.keep, *mask_tensors = pack(mask)
        ctx.save_for_backward(x2, weight, lora_a, lora_b, factor, z, scale, norm, *mask_tensors)
        ctx.scaling, ctx.lead_shape = scaling, x.shape[:-1]
        return out.view(*x.shape[:-1], d_out)  # (N, d_out) -> (..., d_out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, lora_a, lora_b, factor, z, scale, norm, positions, kept = ctx.saved_tensors
        mask = unpack(ctx.keep, positions, kept)
        g2 = grad.reshape(-1, weight.shape[0])  # (..., d_out) -> (N, d_out)
        grad_m = (g2 * z).sum(0) / norm  # (d_out,)
        g_z = g2 * scale  # (N, d_out)
        g_factor = (g_z @ lora_b.T.contiguous().T).mul_(ctx.scaling)  # (N, r)
        grad_b = (factor.T @ g_z).T.mul_(ctx.scaling)  # (r, N) @ (N, d_out) -> (d_out, r)
        dropped = x2 if mask is None else mask.apply(x2).mul_(1.0 / ctx.keep)
        grad_a = g_factor.T @ dropped  # (r, d_in)
        grad_x = None
        if ctx.needs_input_grad[0]:
            if mask is None:
                grad_x = (g_z @ weight).addmm_(g_factor, lora_a)
            else:
                g_dropped = (g_z - g2) @ weight  # ∂x' through W x': g ⊙ (s − 1)
                mask.zero_dropped_(g_dropped.addmm_(g_factor, lora_a))
                grad_x = (g2 @ weight).add_(g_dropped, alpha=1.0 / ctx.keep)
            grad_x = grad_x.view(*ctx.lead_shape, x2.shape[-1])
        return grad_x, None, None, grad_a, grad_b, grad_m, None, None
