"""Dropout masks for the fused kernels, in the form that is cheapest to draw and to apply on the input's device.

Dropout at rate p zeroes each entry of x independently with probability p (the kernels rescale the kept ones by
1 / (1 − p) on their small side). Drawing one uniform number per entry costs, on a CPU, more than half of the
layer's own matrix product (1024 × 512 entries: 1.7 ms to draw, 2.9 ms for the 512 × 512 product, 2 cores).
At the usual rates only the dropped entries are drawn instead. In a sequence of independent Bernoulli(p) trials
the gaps between consecutive dropped positions are i.i.d. Geometric(p):

    G = 1 + ⌊log(1 − U) / log(1 − p)⌋,   U ~ Uniform[0, 1)   ⇒   P(G = g) = (1 − p)^(g − 1) · p,

so the dropped positions are the running sums of about p·n such gaps: the same distribution as n independent
draws, from p·n random numbers (U in float64, so the tail is exact to 2⁻⁵³). The mask is then a sorted list of flat
positions ("sparse"). For the thin (rank-r) products, a masked copy of x in a reused buffer (kernels/scratch.py) is
cheapest (`kept_matmul`, `kept_rmatmul`). For a full-size product of the dropped input (DoRA's W x' beside W x),
the k dropped entries replace a second dense product: with x_d holding only the dropped entries of x,
x' = (x − x_d) / (1 − p), so
    W x' = (W x − W x_d) / (1 − p)    (`dropped_matmul`: x_d Wᵀ as one weighted embedding bag per row, ≈ p of the work),
and an input gradient that differs on the dropped entries needs only the k dropped entries of their own product
(`put_dropped_product_`, a sampled product written over them, instead of a second dense product). Both sparse
products read W by columns, so each takes a copy of Wᵀ made in a reused buffer (kernels/scratch.py), not a fresh one
per call (sampled_addmm makes a fresh one of its own when handed W). DoRA layer 1024 × 1024, 1024 tokens, p = 0.05,
forward + backward, 60 interleaved rounds: 1.95 × a frozen layer with fresh copies, 1.79 × with the reused buffer
(no change at widths 384-576, where the copies are small); the kernel as it is now takes 1.69 ×, caches flushed.
Keeping one copy per frozen weight across steps would save another 5% of a DoRA layer at 1024 × 1024 (3% if
refreshed once per step), 1-2% of a training step of the benchmark's Llama and MiniLM, for one more copy of every
adapted weight; and a write through `weight.data` would leave it stale unseen (it does not bump the version
counter). Not done.

A dense boolean mask of kept entries is drawn instead on accelerators (random numbers are cheap there, and the
index work would force a host synchronisation) and for p > SPARSE_MAX_RATE, where the positions stop being few.
Both forms follow torch's global generator, so `torch.manual_seed` makes them reproducible.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from peftlab.kernels.scratch import scratch

SPARSE_MAX_RATE = 0.25


def dropped_positions(numel: int, p: float, device: torch.device | str = "cpu",
                      draw: int | None = None) -> torch.Tensor:
    """Sorted flat positions in [0, numel) dropped by independent Bernoulli(p) trials (int64, 1-D).

    Gaps are drawn `draw` at a time until they pass the end; by default enough to pass it in one draw with
    probability 1 − 1e-9 (six standard deviations above the expected count).
    """
    if numel == 0 or p <= 0.0:
        return torch.empty(0, dtype=torch.int64, device=device)
    log_keep = math.log1p(-p)
    chunks, last = [], -1
    while last < numel - 1:  # entries last+1 .. numel-1 are still undecided
        expected = (numel - 1 - last) * p
        count = draw or int(expected + 6.0 * math.sqrt(expected * (1.0 - p)) + 16)
        uniform = torch.rand(count, dtype=torch.float64, device=device)
        gaps = torch.log1p(-uniform).div_(log_keep).floor_().add_(1.0)  # (count,) Geometric(p) on {1, 2, ...}
        positions = gaps.cumsum_(0).add_(last).to(torch.int64)  # (count,) increasing
        chunks.append(positions)
        last = int(positions[-1])
    positions = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    return positions[: int(torch.searchsorted(positions, numel))]


class DropoutMask:
    """Which entries of an (N, d) input dropout zeroes: sorted flat `positions` (sparse) or a bool `kept` (dense).

    `keep` = 1 − p. Methods never rescale by 1 / keep; the kernels do that on their (N, r) side.
    """

    def __init__(self, keep: float, positions: torch.Tensor | None = None, kept: torch.Tensor | None = None) -> None:
        if (positions is None) == (kept is None):
            raise ValueError("a DropoutMask needs exactly one of positions and kept")
        self.keep, self.positions, self.kept = keep, positions, kept

    @classmethod
    def sample(cls, x: torch.Tensor, p: float) -> DropoutMask:
        """A fresh mask for x at rate p, in the form best for x's device and p."""
        if x.device.type == "cpu" and p <= SPARSE_MAX_RATE:
            return cls(1.0 - p, positions=dropped_positions(x.numel(), p, x.device))
        return cls(1.0 - p, kept=torch.rand(x.shape, device=x.device) >= p)

    @classmethod
    def from_kept(cls, kept: torch.Tensor, p: float) -> DropoutMask:
        """A given boolean mask (True = kept), e.g. to reproduce or share one."""
        return cls(1.0 - p, kept=kept.to(torch.bool))

    @classmethod
    def for_call(cls, x: torch.Tensor, p: float, training: bool,
                 given: torch.Tensor | DropoutMask | None = None) -> DropoutMask | None:
        """The mask of one kernel call: `given` (a DropoutMask, or a bool tensor of x's shape, True = kept), else a
        fresh one when training with p > 0, else None (no dropout)."""
        if isinstance(given, torch.Tensor):
            return cls.from_kept(given, p)
        if given is None and training and p > 0:
            return cls.sample(x, p)
        return given

    def kept_matmul(self, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(kept ⊙ x2) @ weightᵀ for an (N, d_in) x2 and a (·, d_in) weight: a thin product of the dropped input."""
        return self._masked(x2) @ weight.T

    def kept_rmatmul(self, left: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """leftᵀ @ (kept ⊙ x2) for an (N, ·) left and an (N, d_in) x2: a weight gradient on the dropped input."""
        return left.T @ self._masked(x2)

    def _masked(self, x2: torch.Tensor) -> torch.Tensor:
        """kept ⊙ x2, for one product only (the sparse form's copy lives in a reused buffer, kernels/scratch.py)."""
        if self.kept is not None:
            return x2 * self.kept.reshape(x2.shape)
        return self.zero_dropped_(scratch("masked input", tuple(x2.shape), x2).copy_(x2))

    def zero_dropped_(self, t: torch.Tensor) -> torch.Tensor:
        """Zero the dropped entries of a contiguous (N, d) tensor in place."""
        if self.kept is not None:
            return t.mul_(self.kept.reshape(t.shape))
        t.view(-1).index_fill_(0, self.positions, 0.0)
        return t

    def dropped_matmul(self, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x_d @ weightᵀ, (N, d_out), where x_d is the (N, d_in) x2 with only its dropped entries (kept ones zero).

        Sparse form: row i of the result is Σ_j x2[i, j] · weight[:, j] over the dropped (i, j), one weighted
        embedding bag per row, about p · N · d_in · d_out multiply-adds instead of N · d_in · d_out.
        """
        if self.kept is not None:
            return (x2 * ~self.kept.reshape(x2.shape)) @ weight.T
        starts, cols = self._row_starts(x2.shape)
        return F.embedding_bag(cols, _transposed(weight), starts, mode="sum",  # table: (d_in, d_out)
                               per_sample_weights=x2.reshape(-1)[self.positions])

    def put_dropped_product_(self, out: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """out = left @ right on the dropped entries only (the kept ones unchanged), in place, for a contiguous
        (N, d) `out`.

        Sparse form: only the k dropped entries of the product are computed (a sampled product, k dot products).
        """
        if self.kept is not None:
            return out.copy_(torch.where(self.kept.reshape(out.shape), out, left @ right))
        if out.dtype in (torch.float32, torch.float64):
            starts, cols = self._row_starts(out.shape)
            crow = torch.cat([starts, starts.new_tensor([self.positions.numel()])])  # (N + 1,) CSR row pointers
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                pattern = torch.sparse_csr_tensor(crow, cols, out.new_zeros(cols.numel()), size=out.shape,
                                                  check_invariants=False)
                # The kernel reads `right` by columns: hand it a transposed view of a contiguous copy, in a reused
                # buffer, or it makes a fresh copy of its own.
                values = torch.sparse.sampled_addmm(pattern, left, _transposed(right).T, beta=0.0).values()  # (k,)
        else:  # the sampled product has no half-precision CPU kernel
            values = (left @ right).view(-1)[self.positions]
        out.view(-1).index_copy_(0, self.positions, values)
        return out

    def _row_starts(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """For an (N, d) input, sparse form: (N,) where each row's dropped entries start among the k positions, and
        the (k,) column of each."""
        rows = self.positions.div(shape[1], rounding_mode="floor")  # (k,) sorted, as the positions are
        return torch.searchsorted(rows, torch.arange(shape[0], device=rows.device)), self.positions - rows * shape[1]


def _transposed(matrix: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of matrixᵀ, (cols, rows), in a reused buffer (kernels/scratch.py): valid for one product."""
    rows, cols = matrix.shape
    return scratch("transposed", (cols, rows), matrix).copy_(matrix.T)


def pack(mask: DropoutMask | None) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
    """(keep, positions, kept) of a kernel's mask: keep goes on ctx, the tensors to save_for_backward."""
    return (1.0, None, None) if mask is None else (mask.keep, mask.positions, mask.kept)


def unpack(keep: float, positions: torch.Tensor | None, kept: torch.Tensor | None) -> DropoutMask | None:
    """The mask `pack` took apart, in backward (None: the call had no dropout)."""
    return None if positions is None and kept is None else DropoutMask(keep, positions, kept)
