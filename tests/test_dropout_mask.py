"""Dropout masks of the fused kernels: the sparse sampler is Bernoulli(p) per entry, and both mask forms give the same
outputs and gradients for the same dropped entries."""

from __future__ import annotations

import math

import pytest
import torch

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
    hits = sum(len(dropped_positions(1, 0.2)) for _ in range(5000))  # tiny inputs need the top-up loop
    assert abs(hits - 1000) < 5 * math.sqrt(5000 * 0.2 * 0.8)


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


def test_lora_kernel_sparse_mask_equals_dense_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 7, 12, **F64, requires_grad=True)
    w, b = torch.randn(9, 12, **F64), torch.randn(9, **F64)
    a = torch.randn(4, 12, **F64, requires_grad=True)
    bb = torch.randn(9, 4, **F64, requires_grad=True)
    sparse, dense = _same_mask_both_forms((3, 7, 12), 0.2)
    upstream = torch.randn(3, 7, 9, **F64)
    results = []
    for mask in (sparse, dense):
        out = LoRALinearFunction.apply(x, w, b, a, bb, 0.5, mask)
        results.append((out, *torch.autograd.grad(out, (x, a, bb), upstream)))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)
    assert torch.autograd.gradcheck(lambda x_, a_, b_: LoRALinearFunction.apply(x_, w, b, a_, b_, 0.5, sparse),
                                    (x, a, bb))


def test_dora_kernel_sparse_mask_equals_dense_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 10, **F64, requires_grad=True)
    w, b = torch.randn(7, 10, **F64), torch.randn(7, **F64)
    a = torch.randn(3, 10, **F64, requires_grad=True)
    bb = torch.randn(7, 3, **F64, requires_grad=True)
    m = torch.rand(7, **F64).add_(0.5).requires_grad_(True)
    sparse, dense = _same_mask_both_forms((2, 5, 10), 0.25)
    upstream = torch.randn(2, 5, 7, **F64)
    results = []
    for mask in (sparse, dense):
        out = DoRALinearFunction.apply(x, w, b, a, bb, m, 0.5, mask)
        results.append((out, *torch.autograd.grad(out, (x, a, bb, m), upstream)))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)
