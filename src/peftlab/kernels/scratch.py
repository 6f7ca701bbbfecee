"""Reusable per-thread buffers for the kernels' large short-lived temporaries.

A fresh (N, d) temporary of a few MB costs more than the arithmetic that fills it once the block is large enough for
the C allocator to map new pages for it: a masked copy of 512 × 1536 floats plus its rank-8 product took 1.4 ms with
a fresh tensor and 0.4 ms with a reused one, between allocations that churn the heap as a training step does
(2 cores). A kernel that needs such a temporary only for one product or one
reduction takes it from here instead.

Only on the CPU: accelerators' caching allocators already reuse blocks, so there a fresh tensor is returned. The
buffers stay allocated (one per slot and width, as large as the largest use) until `release()`.

Rules for callers: a buffer is valid until the next `scratch` call with the same slot name and width, so use it at
once, within one forward or backward, and never return it or save it for backward.
"""

from __future__ import annotations

import threading

import torch

_BUFFERS = threading.local()  # per thread: {(slot, width, dtype): flat CPU buffer}


def scratch(slot: str, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous `shape` tensor with `like`'s dtype and device, from this thread's buffer `slot`.

    Buffers are keyed by width, so a varying number of rows (batch × tokens) reuses one buffer that grows to the
    largest seen.
    """
    rows, width = shape
    if like.device.type != "cpu":
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    key = (slot, width, like.dtype)
    buffers = _BUFFERS.__dict__.setdefault("buffers", {})
    buffer = buffers.get(key)
    # A buffer made under torch.inference_mode cannot be written outside it: replace it then.
    if (buffer is None or buffer.numel() < rows * width
            or (buffer.is_inference() and not torch.is_inference_mode_enabled())):
        buffer = buffers[key] = torch.empty(rows * width, dtype=like.dtype)
    return buffer[: rows * width].view(rows, width)


def release() -> None:
    """Free this thread's scratch buffers (they are re-created on the next use)."""
    _BUFFERS.__dict__.pop("buffers", None)
