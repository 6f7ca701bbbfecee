"""Measurements of a run besides training: inference latency, file sizes, library versions, hardware."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from peftlab.train import synchronize

LIBRARIES = ("peftlab", "torch", "transformers", "accelerate", "numpy", "safetensors", "tokenizers")


def latency_ms(call: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `call()` in milliseconds, after `warmup` untimed calls (no gradients)."""
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def folder_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the numbers, and Python's."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed" if name != "torch" else torch.__version__
    out["torch"] = torch.__version__
    return out


def hardware(device: torch.device) -> dict[str, Any]:
    """The machine a run used: CPU model and cores, RAM, torch threads, accelerator name."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "device": str(device)}
    try:
        info["ram_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if device.type == "cuda":
        info["accelerator"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
