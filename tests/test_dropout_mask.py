"""Dropout masks of the fused kernels: the sparse sampler is Bernoulli(p) per entry, and both mask forms give the same
outputs and gradients for the same dropped entries."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import peftlab
from peftlab.kernels.dora_linear import DoRALinearFunction
from peftlab.kernels.dropout_mask import DropoutMask, dropped_positions
from peftlab.kernels.lora_linear import LoRALinearFunction

F64 = {"dtype": torch.float64}


@pytest.mark.parametrize("p", [0.05, 0.25])
def test_dropped_positions_are_independent_bernoulli(p: float) -> None:
    torch.manual_seed(0)
    n = 400_000
    positions = dropped_positions(n, p)
    assert positions.dtype == torch.int64 and positions.dim() == 1
    assert int(positions[0]) >= 0 and int(positions[-1]) < n
    assert bool((positions[1:] > positions[:-1]).all())  # sorted, no repeats
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(len(positions) - n * p) < 5 * sigma
    # Gaps are Geometric(p): P(gap = g) = (1 - p)^(g - 1) p, i.e. the trials are independent (chi-square, 8 bins).
    gaps = torch.diff(positions)
    observed = torch.bincount(gaps.clamp(max=8), minlength=9)[1:].double()  # gaps 1..7 and >= 8
    expected = torch.tensor([(1 - p) ** (g - 1) * p for g in range(1, 8)] + [(1 - p) ** 7], **F64) * len(gaps)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 30.0  # 7 degrees of freedom: P(chi2 > 30) < 1e-4
    # Every column of a (N, 512) layout is dropped at the same rate (positions are uniform).
    per_column = torch.bincount(positions % 512, minlength=512).double()
    chi2_cols = float(((per_column - per_column.mean()) ** 2 / per_column.mean()).sum())
    assert chi2_cols < 511 + 6 * math.sqrt(2 * 511)


def test_dropped_positions_edge_cases() -> None:
    torch.manual_seed(0)
    assert len(dropped_positions(0, 0.1)) == 0
    assert len(dropped_positions(100, 0.0)) == 0
    hits = sum(len(dropped_positions(1, 0.2)) for _ in range(5000))
    assert abs(hits - 1000) < 5 * math.sqrt(5000 * 0.2 * 0.8)


def test_dropped_positions_drawn_in_small_batches_keep_the_distribution() -> None:
    """Gaps drawn 3 at a time: the loop continues from the last position, with no gap or overlap at the seams."""
    torch.manual_seed(0)
    n, p = 20_000, 0.1
    positions = dropped_positions(n, p, draw=3)
    assert bool((positions[1:] > positions[:-1]).all()) and int(positions[-1]) < n
    assert abs(len(positions) - n * p) < 5 * math.sqrt(n * p * (1 - p))
    gaps = torch.diff(positions)
    assert abs(float((gaps == 1).double().mean()) - p) < 0.02  # P(next entry dropped | this one) = p


def test_sample_picks_the_sparse_form_on_cpu_at_low_rates() -> None:
    x = torch.randn(8, 16)
    assert DropoutMask.sample(x, 0.1).positions is not None
    dense = DropoutMask.sample(x, 0.5)
    assert dense.kept is not None and dense.kept.shape == x.shape
    with pytest.raises(ValueError, match="exactly one"):
        DropoutMask(0.9)


def _same_mask_both_forms(shape: tuple[int, ...], p: float) -> tuple[DropoutMask, DropoutMask]:
    numel = math.prod(shape)
    positions = dropped_positions(numel, p)
    kept = torch.ones(numel, dtype=torch.bool)
    kept[positions] = False
    return DropoutMask(1 - p, positions=positions), DropoutMask.from_kept(kept.view(shape), p)


def _linear_case(d_in: int, d_out: int, r: int) -> dict[str, torch.Tensor]:
    """Input (2, 5, d_in), frozen weight and bias, trainable A, B and DoRA magnitude, all float64."""
    torch.manual_seed(0)
    return {"x": torch.randn(2, 5, d_in, **F64, requires_grad=True), "w": torch.randn(d_out, d_in, **F64),
            "b": torch.randn(d_out, **F64), "a": torch.randn(r, d_in, **F64, requires_grad=True),
            "bb": torch.randn(d_out, r, **F64, requires_grad=True),
            "m": torch.rand(d_out, **F64).add_(0.5).requires_grad_(True)}


def _assert_both_forms_agree(kernel: Callable[[DropoutMask], torch.Tensor], inputs: tuple[torch.Tensor, ...],
                             p: float) -> None:
    """Outputs and gradients of `kernel(mask)` agree for the sparse and the dense form of one mask."""
    x = inputs[0]
    sparse, dense = _same_mask_both_forms(tuple(x.shape), p)
    results = []
    for mask in (sparse, dense):
        out = kernel(mask)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), **F64)  # the same for both
        results.append((out, *torch.autograd.grad(out, inputs, upstream)))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)


def test_lora_kernel_sparse_mask_equals_dense_mask() -> None:
    c = _linear_case(12, 9, 4)
    _assert_both_forms_agree(lambda mask: LoRALinearFunction.apply(c["x"], c["w"], c["b"], c["a"], c["bb"], 0.5, mask),
                             (c["x"], c["a"], c["bb"]), 0.2)
    sparse, _ = _same_mask_both_forms(tuple(c["x"].shape), 0.2)
    assert torch.autograd.gradcheck(
        lambda x_, a_, b_: LoRALinearFunction.apply(x_, c["w"], c["b"], a_, b_, 0.5, sparse), (c["x"], c["a"], c["bb"]))


def test_dora_kernel_sparse_mask_equals_dense_mask() -> None:
    c = _linear_case(10, 7, 3)
    _assert_both_forms_agree(
        lambda mask: DoRALinearFunction.apply(c["x"], c["w"], c["b"], c["a"], c["bb"], c["m"], 0.5, mask),
        (c["x"], c["a"], c["bb"], c["m"]), 0.25)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropped_entry_products_match_dense_formulas(dtype: torch.dtype) -> None:
    """The sparse products DoRA's kernel uses: x_d Wᵀ (only the dropped entries of x) and the dropped entries of
    h W written over `out`, for both mask forms, against the plain dense formulas; rows without a dropped entry
    included."""
    torch.manual_seed(0)
    x, weight, h = torch.randn(37, 20, dtype=dtype), torch.randn(11, 20, dtype=dtype), torch.randn(37, 11, dtype=dtype)
    sparse, dense = _same_mask_both_forms((37, 20), 0.05)
    dropped = ~dense.kept
    assert not bool(dropped.any(dim=1).all())  # some rows have nothing dropped: empty bags
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.1, "rtol": 0.02}
    for mask in (sparse, dense):
        torch.testing.assert_close(mask.dropped_matmul(x, weight), (x * dropped) @ weight.T, **tolerance)
        out = torch.randn(37, 20, dtype=dtype)
        expected = torch.where(dropped, h @ weight, out)
        torch.testing.assert_close(mask.put_dropped_product_(out, h, weight), expected, **tolerance)


def test_scratch_buffers_are_reused_per_width_and_released() -> None:
    from peftlab.kernels import scratch as scratch_module

    like = torch.zeros(1)
    first = scratch_module.scratch("test", (4, 3), like)
    smaller = scratch_module.scratch("test", (2, 3), like)  # fewer rows: the same storage
    assert smaller.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
    assert smaller.shape == (2, 3) and smaller.is_contiguous()
    other_slot = scratch_module.scratch("other", (4, 3), like)
    assert other_slot.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
    scratch_module.release()
    assert not getattr(scratch_module._BUFFERS, "buffers", {})  # nothing held after release


def test_training_after_a_dropout_forward_under_inference_mode() -> None:
    """A training-mode forward under torch.inference_mode (a common slip in evaluation code) must not leave a scratch
    buffer that later training steps cannot write."""
    from peftlab.kernels import scratch as scratch_module

    scratch_module.release()
    torch.manual_seed(0)
    model = peftlab.adapt(nn.Sequential(nn.Linear(64, 64)), peftlab.LoRA(targets=["0"], dropout=0.1, init="random"))
    model.train()
    with torch.inference_mode():
        model(torch.randn(8, 64))
    model(torch.randn(8, 64)).sum().backward()
    assert model.base_model[0].adapters["default"].lora_A.weight.grad is not None
