"""What the tests' child processes run. The tests fork them from a server that has imported this module once
(`forked` in conftest.py), so that a child starts in milliseconds rather than importing torch again."""

from __future__ import annotations

import multiprocessing
import os
import resource
import time

import torch
import transformers.pytorch_utils  # noqa: F401  (adapt() imports it lazily: imported here, children skip that second)
from torch import nn

import peftlab
from peftlab.io.adapter_commit import PAUSE_ENV

SITES = ["0", "1", "2", "3"]


def base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(256, 256) for _ in SITES))


def adapter(kind: str) -> peftlab.AdaptedModel:
    """Adapter "A" (LoRA r=4, alpha 16) or "B" (r=128, alpha 512), the same in every process that builds it."""
    r, alpha, seed = {"A": (4, 16.0, 1), "B": (128, 512.0, 2)}[kind]
    model = peftlab.adapt(base(), peftlab.LoRA(r=r, alpha=alpha, targets=SITES, init="random"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_()
    return model


def save_forever(folder: str) -> None:
    """Save A, B, A, B, ... into the same folder until killed."""
    a, b = adapter("A"), adapter("B")
    while True:
        a.save(folder)
        b.save(folder)


def save_once(folder: str, kind: str, pause_file: str) -> None:
    """One save, pausing between its renames (the test hook), where the test kills it."""
    model = adapter(kind)
    os.environ[PAUSE_ENV] = pause_file
    model.save(folder)


def small_base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))


def load_measured(folder: str, queue: multiprocessing.Queue) -> None:
    """Load `folder` onto small_base(); report (error, seconds, growth of the peak resident memory in MB)."""
    model = small_base()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        peftlab.load(model, folder)
        error = "loaded"
    except Exception as err:  # noqa: BLE001  (reported to the parent, which asserts on it)
        error = f"{type(err).__name__}: {err}"
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    queue.put((error, time.perf_counter() - start, grown))


def hold_lock(folder: str, purpose: str, ready_file: str, kernel_lock: bool = True) -> None:
    """Hold the folder's lock until killed (`kernel_lock=False`: as on a file system without flock)."""
    from pathlib import Path

    from peftlab.io import folder_lock

    if not kernel_lock:
        folder_lock.fcntl = None
    with folder_lock.folder_lock(Path(folder), purpose):
        Path(ready_file).write_text("held")
        time.sleep(3600)
