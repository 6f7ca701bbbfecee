"""Contiguous copies of Wᵀ for frozen weights W, made once and kept across calls.

DoRA's sparse products on a CPU (kernels/dropout_mask.py) read the base weight W (d_out, d_in) by columns, so they
run on a contiguous (d_in, d_out) copy of Wᵀ. Making that copy is a strided pass, far slower than a plain copy:
1.8 ms at 1024 × 1024 against 0.25 ms for a plain copy (cold cache, 2 cores), while the sparse product it serves
takes 2.5-3.7 ms. A frozen W does not change from one step to the next, so its transpose is made on first use and
kept while W keeps its storage, dtype, shape and version counter. Any in-place write to W (merging an adapter,
load_state_dict, an optimizer step) bumps the version counter, and the copy is remade on the next call.

Memory: one extra copy of each weight used this way (on a CPU, the DoRA-adapted weights while training with
dropout), freed with the weight or by `release()`.
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakTensorKeyDictionary

_COPIES = WeakTensorKeyDictionary()  # weight -> (its state when copied, contiguous copy of weightᵀ)


def frozen_transpose(weight: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of weightᵀ, (d_in, d_out) for a (d_out, d_in) weight; never write to it."""
    state = (weight._version, weight.data_ptr(), weight.dtype, weight.device, tuple(weight.shape))
    entry = _COPIES.get(weight)
    # A copy made under torch.inference_mode cannot be used by autograd-recorded code outside it: remake it then.
    if entry is not None and entry[0] == state and not (entry[1].is_inference()
                                                        and not torch.is_inference_mode_enabled()):
        return entry[1]
    with torch.no_grad():
        copy = weight.detach().T.contiguous()  # (d_out, d_in) -> (d_in, d_out)
    _COPIES[weight] = (state, copy)
    return copy


def release() -> None:
    """Free all kept transposes (they are remade on the next use)."""
    _COPIES.clear()
