"""One fused autograd function for a frozen Linear plus LoRA:  y = x Wᵀ + b + s · (m ⊙ x / (1 − p)) Aᵀ Bᵀ

Against the plain composition of modules (dropout, two linears, a scale, an add) it
  - accumulates the base product onto the low-rank update inside one BLAS call (addmm_: no extra pass over the
    (N, d_out) output, no temporaries); the input gradient likewise,
  - applies the scale s and the dropout rescale 1 / (1 − p) to the small (N, r) factor, never to a full-size tensor,
  - draws the dropout mask in its cheapest form (kernels/dropout_mask.py: on a CPU, only the dropped positions),
  - saves for backward only x (which the model keeps anyway), the (N, r) factor and the mask,
  - computes the input gradient in one pass: ∂x = g W + m ⊙ (s / (1 − p) · g B) A,
  - passes the rank-r operands to the matrix products as transposed views of contiguous (r, ·) matrices, the
    layout the CPU BLAS handles fastest for thin products.
Valid when the base weight and bias are frozen; the method file falls back to the plain path otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from peftlab.kernels.dropout_mask import DropoutMask, pack, unpack


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, mask: DropoutMask | None) -> torch.Tensor:
        d_in, d_out = x.shape[-1], weight.shape[0]
        x2 = x.reshape(-1, d_in)  # (..., d_in) -> (N, d_in)
        if mask is None:
            factor = x2 @ lora_a.T  # (N, r)
        else:
            factor = mask.kept_matmul(x2, lora_a).mul_(1.0 / mask.keep)  # (N, r); the dropout rescale on the small side
        # The thin product first, then the large one accumulates onto it inside the BLAS call (no extra pass).
        if bias is not None:
            out = torch.addmm(bias, factor, lora_b.T, alpha=scaling)  # (N, d_out): b + c B A x'
        else:
            out = torch.mm(factor * scaling, lora_b.T)
        out.addmm_(x2, weight.T)  # += W x
        ctx.keep, *mask_tensors = pack(mask)
        ctx.save_for_backward(x2, weight, lora_a, lora_b, factor, *mask_tensors)
        ctx.scaling, ctx.lead_shape = scaling, x.shape[:-1]
        return out.view(*x.shape[:-1], d_out)  # (N, d_out) -> (..., d_out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, lora_a, lora_b, factor, positions, kept = ctx.saved_tensors
        mask = unpack(ctx.keep, positions, kept)
        d_in = x2.shape[-1]
        g2 = grad.reshape(-1, weight.shape[0])  # (..., d_out) -> (N, d_out)
        g_factor = (g2 @ lora_b.T.contiguous().T).mul_(ctx.scaling / ctx.keep)  # (N, r), dropout rescale included
        grad_b = (factor.T @ g2).T.mul_(ctx.scaling)  # (r, N) @ (N, d_out) -> (r, d_out) -> (d_out, r)
        grad_a = g_factor.T @ x2 if mask is None else mask.kept_rmatmul(g_factor, x2)  # (r, d_in)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = g_factor @ lora_a  # (N, d_in): ∂x' through A, then masked, then the large product onto it
            if mask is not None:
                mask.zero_dropped_(grad_x)
            grad_x = grad_x.addmm_(g2, weight).view(*ctx.lead_shape, d_in)
        return grad_x, None, None, grad_a, grad_b, None, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, dropout: float, training: bool,
                mask: torch.Tensor | DropoutMask | None = None) -> torch.Tensor:
    """Frozen linear plus LoRA in one autograd node.

    `mask` may fix the dropout mask: a DropoutMask, or a bool tensor of x's shape (True = kept) at rate `dropout`.
    Otherwise a fresh one is drawn when training with dropout > 0.
    """
    return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling,
                                    DropoutMask.for_call(x, dropout, training, mask))
