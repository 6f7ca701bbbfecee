"""One fused autograd function for a frozen Linear plus DoRA, with or without dropout:

    y = W x + b + (s − 1) ⊙ W x' + s ⊙ c · B A x',     s = m / ‖W + c · B A‖_row  (a constant for the gradient)

where x' = m_drop ⊙ x / keep is the dropped input (Hugging Face PEFT's definition). Without dropout x' = x and this is
y = s ⊙ z + b with z = W x + c · B A x: one large product instead of the base output, its bias-free copy and two
rescaled copies. With dropout, the definition reads as two large products per direction (W x and W x'); only the
k ≈ p · N · d_in dropped entries x_d make them differ, so W x' = (W x − W x_d) / keep with W x_d a sparse product
(DropoutMask.dropped_matmul). Saved for backward: x (kept by the model anyway), the dropout mask
(kernels/dropout_mask.py), the (N, r) factor A x' and z = W x' + c · B A x', the one (N, d_out) tensor the magnitude's
gradient needs:
    ∂m = Σ_N (g ⊙ z) / ‖·‖,   ∂z = g ⊙ s,   ∂B = c (∂z)ᵀ(A x'),   ∂A = c (∂z B)ᵀ x',
    ∂x = g W + (m_drop / keep) ⊙ (h W + c (∂z B) A),   h = g ⊙ (s − 1)   (without dropout: ∂x = ∂z W + c (∂z B) A).
With m_drop / keep = (1 − d) / keep, d the dropped entries, the two large products fold into one plus a sampled one:
    ∂x = (g + h / keep) W + (m_drop / keep) ⊙ c (∂z B) A − d ⊙ (h W) / keep,
where d ⊙ (h W) needs only the k dropped entries of h W (DropoutMask.sub_dropped_product_).
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
        if mask is None:
            factor = x2 @ lora_a.T  # (N, r)
            z = (x2 @ weight.T).addmm_(factor, lora_b.T, alpha=scaling)  # (N, d_out): W x + c B A x
            out = torch.addcmul(bias, z, scale) if bias is not None else z * scale
        else:  # W x + b + (s − 1) ⊙ W x' + s ⊙ c B A x'
            factor = (mask.apply(x2) @ lora_a.T).mul_(1.0 / mask.keep)  # (N, r): A x'; the masked copy freed at once
            out = x2 @ weight.T  # (N, d_out): W x
            z = torch.sub(out, mask.dropped_matmul(x2, weight))  # (N, d_out): W x − W x_d = keep · W x'
            out.addcmul_(z, (scale - 1.0) / mask.keep)
            out.addmm_(factor, (scale.unsqueeze(1) * lora_b).T, alpha=scaling)  # s scales the small (d_out, r) side
            if bias is not None:
                out.add_(bias)
        ctx.keep, *mask_tensors = pack(mask)
        ctx.save_for_backward(x2, weight, lora_a, lora_b, factor, z, scale, norm, *mask_tensors)
        ctx.scaling, ctx.lead_shape = scaling, x.shape[:-1]
        return out.view(*x.shape[:-1], d_out)  # (N, d_out) -> (..., d_out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, lora_a, lora_b, factor, z, scale, norm, positions, kept = ctx.saved_tensors
        mask = unpack(ctx.keep, positions, kept)
        g2 = grad.reshape(-1, weight.shape[0])  # (..., d_out) -> (N, d_out)
        if mask is None:  # z = W x + c B A x
            grad_m = (g2 * z).sum(0) / norm  # (d_out,)
            g_z = g2 * scale  # (N, d_out)
            g_factor = (g_z @ lora_b.T.contiguous().T).mul_(ctx.scaling)  # (N, r)
            grad_b = (factor.T @ g_z).T.mul_(ctx.scaling)  # (r, N) @ (N, d_out) -> (d_out, r)
            grad_a = g_factor.T @ x2  # (r, d_in)
            grad_x = (g_z @ weight).addmm_(g_factor, lora_a) if ctx.needs_input_grad[0] else None
        else:  # z = keep · W x'; s moves to the small side: ∂z B = g (s ⊙ B), ∂B = c s ⊙ (gᵀ A x')
            g_factor_t = g2.T @ factor  # (d_out, N) @ (N, r) -> (d_out, r)
            grad_m = ((g2 * z).sum(0).div_(ctx.keep) + ctx.scaling * (g_factor_t * lora_b).sum(1)) / norm  # (d_out,)
            grad_b = g_factor_t.mul_(scale.unsqueeze(1) * ctx.scaling)  # (d_out, r)
            scaled_b = (scale.unsqueeze(1) * lora_b).T.contiguous().T  # (d_out, r) as a transposed view
            g_factor = (g2 @ scaled_b).mul_(ctx.scaling / ctx.keep)  # (N, r), dropout rescale included
            grad_a = g_factor.T @ mask.apply(x2)  # (r, d_in)
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = (g2 * (1.0 + (scale - 1.0) / ctx.keep)) @ weight  # (N, d_in): the g W + h W / keep part
                mask.addmm_on_kept_(grad_x, g_factor, lora_a)
                mask.sub_dropped_product_(grad_x, g2 * (scale - 1.0), weight, alpha=1.0 / ctx.keep)  # − d ⊙ h W / keep
        if grad_x is not None:
            grad_x = grad_x.view(*ctx.lead_shape, x2.shape[-1])
        return grad_x, None, None, grad_a, grad_b, grad_m, None, None
