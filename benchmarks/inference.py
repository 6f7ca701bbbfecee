"""Inference-side measurements: forward latency (base, adapter unmerged, adapter merged) and adapter load/switch."""

from __future__ import annotations

import copy
import gc
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks import libraries
from benchmarks.configs import INFERENCE_METHOD, METHODS
from benchmarks.measure import Batch, time_calls
from benchmarks.models import ModelPreset

SWITCHES_PER_REPEAT = 10


def inference_latency(library: str, preset: ModelPreset, model: nn.Module, batch: Batch, warmup: int,
                      repeats: int) -> dict[str, list[float]]:
    """Eval-mode forward latency of the base model ("base") or of a LoRA adapter unmerged, then merged.

    With a library, every adapted call is paired with a call of an untouched copy of the base model next to it, in
    the same process ("paired_base", "paired_base_merged"), so that the "× base" ratio is free of slow drifts.
    For "base" the pair is the model and its untouched copy ("copy_latency"): an A/A control whose ratio shows
    how far from 1.00 two identical models measure, i.e. the resolution of the "× base" column.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    plain = copy.deepcopy(model).eval()
    if library == "base":
        copy_latency, latency = _paired_latency(plain, model, inputs, warmup, repeats)
        return {"latency": latency, "copy_latency": copy_latency}
    adapted = libraries.attach(library, METHODS[INFERENCE_METHOD], preset, model)
    _randomise_adapter(adapted)
    unmerged, base_unmerged = _paired_latency(adapted, plain, inputs, warmup, repeats)
    adapted.merge_adapter()
    merged, base_merged = _paired_latency(adapted, plain, inputs, warmup, repeats)
    return {"latency": unmerged, "merged_latency": merged, "paired_base": base_unmerged,
            "paired_base_merged": base_merged}


def _paired_latency(model: nn.Module, base: nn.Module, batch: Batch, warmup: int,
                    repeats: int) -> tuple[list[float], list[float]]:
    """(latencies of `model`, latencies of `base`), one call of each per pair; the order within a pair alternates
    (base first, then model first), so that neither always runs second."""
    calls = {"model": model.eval(), "base": base.eval()}
    timed: dict[str, list[float]] = {"model": [], "base": []}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name in ("base", "model") if i % 2 == 0 else ("model", "base"):
                seconds = time_calls(lambda m=calls[name]: m(**batch), 0, 1)
                if i >= warmup:
                    timed[name] += seconds
    return timed["model"], timed["base"]


def _randomise_adapter(model: nn.Module) -> None:
    """Give LoRA's zero-initialised B matrices values, so that merging really changes the weights."""
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(std=0.01)


def adapter_switching(library: str, preset: ModelPreset, model: nn.Module, repeats: int) -> dict[str, list[float]]:
    """Seconds to load a saved LoRA adapter onto a fresh base model, to load a second one next to it, and to switch
    the active adapter (median over `SWITCHES_PER_REPEAT` switches per repeat)."""
    pristine = copy.deepcopy(model)
    adapted = libraries.attach(library, METHODS[INFERENCE_METHOD], preset, model)
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "a", Path(tmp) / "b"
        libraries.save(adapted, first)
        libraries.save(adapted, second)
        del adapted
        return _load_and_switch(library, pristine, first, second, repeats)


def _load_and_switch(library: str, pristine: nn.Module, first: Path, second: Path,
                     repeats: int) -> dict[str, list[float]]:
    """Per repeat: load `first` onto a fresh copy of `pristine`, load `second` next to it, switch back and forth."""
    results: dict[str, list[float]] = {"load": [], "load_second": [], "switch": []}
    for _ in range(repeats):
        gc.collect()  # the previous repeat's models
        base = copy.deepcopy(pristine)
        seconds, adapted = _timed(partial(libraries.load, library, base, first))
        results["load"].append(seconds)
        results["load_second"].append(_timed(partial(libraries.load_second, library, adapted, second, "other"))[0])
        for i in range(SWITCHES_PER_REPEAT):
            name = "other" if i % 2 == 0 else "default"
            results["switch"].append(_timed(partial(adapted.set_adapter, name))[0])
    return results


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, return value) of one call."""
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value
