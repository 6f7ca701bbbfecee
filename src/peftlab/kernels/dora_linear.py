"""One fused autograd function for a frozen Linear plus DoRA, with or without dropout:

    y = W x + b + (s − 1) ⊙ W x' + s ⊙ c · B A x',     s = m / ‖W + c · B A‖_row  (a constant for the gradient)

where x' = m_drop ⊙ x / keep is the dropped input (Hugging Face PEFT's definition). Without dropout x' = x and this is
y = s ⊙ z + b with z = W x + c · B A x: one large product instead of the base output, its bias-free copy and two
rescaled copies. With dropout, the definition reads as two large products per direction (W x and W x'); only the
k ≈ p · N · d_in dropped entries x_d make them differ, so W x' = (W x − W x_d) / keep with W x_d a sparse product
(DropoutMask.dropped_matmul). Saved for backward: x (kept by the model anyway), the dropout mask
(kernels/dropout_mask.py), the (N, r) factor A x', and the one (N, d_out) tensor the magnitude's gradient needs,
z = W x + c · B A x without dropout, z = W x − W x_d = keep · W x' with it. With u = W x' + c · B A x':
    ∂m = Σ_N (g ⊙ u) / ‖·‖ = (Σ_N g ⊙ z / keep + c · Σ_r (gᵀ A x') ⊙ B) / ‖·‖,
    ∂B = c · s ⊙ (gᵀ A x'),   ∂A = c (g (s ⊙ B))ᵀ x'   (s applied on the small (d_out, r) side),
    ∂x = g W + (m_drop / keep) ⊙ (h W + c g (s ⊙ B) A),   h = g ⊙ (s − 1).
On a dropped entry (m_drop = 0) x reaches y only through W x, so ∂x = g W there; on a kept one the two large products
fold into one, ∂x = (g + h / keep) W + c g (s ⊙ B) A / keep. So one large product serves every entry, and the k
dropped entries are overwritten with their own entries of g W, a sampled product (DropoutMask.put_dropped_product_).
Without dropout, ∂x = (g ⊙ s) W + c (g ⊙ s) B A: one large product per direction, as for a frozen Linear.
"""

from __future__ import annotations

from typing import Any

import torch

from peftlab.kernels.dropout_mask import DropoutMask, pack, unpack
from peftlab.kernels.scratch import scratch


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
            z = torch.mm(factor * scaling, lora_b.T).addmm_(x2, weight.T)  # (N, d_out): c B A x + W x
            out = torch.addcmul(bias, z, scale) if bias is not None else z * scale
        else:  # W x + b + (s − 1) ⊙ W x' + s ⊙ c B A x'
            factor = mask.kept_matmul(x2, lora_a).mul_(1.0 / mask.keep)  # (N, r): A x'
            w_dropped = mask.dropped_matmul(x2, weight)  # (N, d_out): W x_d
            z = torch.addmm(w_dropped, x2, weight.T, beta=-1.0)  # (N, d_out): W x − W x_d = keep · W x'
            out = w_dropped.addcmul_(z, 1.0 + (scale - 1.0) / mask.keep)  # W x + (s − 1) ⊙ W x', W x = z + W x_d
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
        temporary = scratch("dora", tuple(g2.shape), g2)  # (N, d_out), for one product or reduction at a time
        grad_m = torch.mul(g2, z, out=temporary).sum(0)  # (d_out,): Σ_N g ⊙ z
        if mask is None:  # z = W x + c B A x
            grad_m.div_(norm)
            g_z = torch.mul(g2, scale, out=temporary)  # (N, d_out)
            g_factor = (g_z @ lora_b.T.contiguous().T).mul_(ctx.scaling)  # (N, r)
            grad_b = (factor.T @ g_z).T.mul_(ctx.scaling)  # (r, N) @ (N, d_out) -> (d_out, r)
            grad_a = g_factor.T @ x2  # (r, d_in)
            grad_x = (g_factor @ lora_a).addmm_(g_z, weight) if ctx.needs_input_grad[0] else None
        else:  # z = keep · W x'; s moves to the small side: ∂z B = g (s ⊙ B), ∂B = c s ⊙ (gᵀ A x')
            g_factor_t = (factor.T @ g2).T  # (r, N) @ (N, d_out) -> (r, d_out) -> (d_out, r)
            grad_m = (grad_m.div_(ctx.keep) + ctx.scaling * (g_factor_t * lora_b).sum(1)) / norm  # (d_out,)
            grad_b = g_factor_t.mul_(scale.unsqueeze(1) * ctx.scaling)  # (d_out, r)
            scaled_b = (scale.unsqueeze(1) * lora_b).T.contiguous().T  # (d_out, r) as a transposed view
            g_factor = (g2 @ scaled_b).mul_(ctx.scaling / ctx.keep)  # (N, r), dropout rescale included
            grad_a = mask.kept_rmatmul(g_factor, x2)  # (r, d_in)
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = g_factor @ lora_a  # (N, d_in): the low-rank part (its dropped entries are overwritten)
                g_kept = torch.mul(g2, 1.0 + (scale - 1.0) / ctx.keep, out=temporary)  # (N, d_out): g + h / keep
                grad_x.addmm_(g_kept, weight)  # += (g + h / keep) W
                mask.put_dropped_product_(grad_x, g2, weight)  # dropped entries: g W
        if grad_x is not None:
            grad_x = grad_x.view(*ctx.lead_shape, x2.shape[-1])
        return grad_x, None, None, grad_a, grad_b, grad_m, None, None
