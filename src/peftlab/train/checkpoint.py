"""Checkpoints that survive `kill -9`: OUT/checkpoints/step-00000040/ holds

    adapter/            the adapters (adapter_config.json + adapter_model.safetensors, Hugging Face PEFT layout)
    state.safetensors   optimiser moments, RNG states (torch, CUDA, NumPy) of every process, the data generator
    checkpoint.json     step, run settings, schedule, loss scale, optimiser hyperparameters, Python RNG states, data
                        position, and the size and SHA-256 of every other file (the manifest)

A checkpoint is written into a hidden temporary folder, every file synced to disk, the manifest last, then the folder
is renamed into place in one step. A checkpoint counts only when its manifest is there and every file matches it, so a
folder torn by a crash (or a disk that lost a write) is never loaded: the one before it is. Nothing is read with
pickle: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from peftlab.core.model import AdaptedModel
from peftlab.errors import PeftlabError
from peftlab.io.adapter_files import adapter_tensors, load_adapter_weights
from peftlab.io.adapter_files import save_adapters as write_adapters
from peftlab.train.config import TrainConfigError
from peftlab.train.distributed import Parallel, full_tensors, reshard
from peftlab.train.loop import LoopState
from peftlab.train.seed import seed_everything
from peftlab.train.state_files import (
    load_optimizer_state,
    load_rng_state,
    optimizer_state,
    prefixed,
    rng_state,
    split_state,
    under,
)

FORMAT = "peftlab-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"
TENSORS = "state.safetensors"
ADAPTER = "adapter"
_STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(PeftlabError):
    """A checkpoint cannot be used for this run (another run's settings, or not a complete checkpoint)."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def verify(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete checkpoint folder; None when anything is missing or differs from it."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"),
                                                                                             dict):
        return None
    for relative, expected in manifest["files"].items():
        path = folder / relative
        if not path.is_file() or path.stat().st_size != expected.get("bytes"):
            return None
        if _sha256(path) != expected.get("sha256"):
            return None
    return manifest


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under `root`, oldest first (torn ones are left out)."""
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = _STEP_DIR.fullmatch(folder.name)
        if match and folder.is_dir() and verify(folder) is not None:
            found.append((int(match.group(1)), folder))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, if any."""
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def load_adapters(model: AdaptedModel, folder: Path) -> None:
    """Put a checkpoint's adapter tensors into `model` (before it is wrapped for several processes)."""
    if verify(folder) is None:
        raise CheckpointError(f"{folder} is not a complete peftlab checkpoint (its {MANIFEST} is missing or a file "
                              "differs from it)")
    restore_adapters(model, folder / ADAPTER)


def restore_adapters(model: AdaptedModel, folder: Path) -> None:
    """Overwrite every adapter of `model` with its tensors saved by `model.save(folder)` ("default" in the folder,
    the others in subfolders named after them)."""
    for name in model.adapters:
        load_adapter_weights(model, name, folder if name == "default" else folder / name)


def save_adapters(model: AdaptedModel, folder: Path, parallel: Parallel) -> None:
    """`model.save(folder)`, also under FSDP: every process takes part in gathering shards, the main one writes."""
    if parallel.strategy == "fsdp":
        reshard(model)
    views = [model.adapter(name) for name in model.adapters]
    tensors = {v.name: full_tensors(adapter_tensors(v)) for v in views} if parallel.strategy == "fsdp" else None
    if parallel.is_main:
        write_adapters(views, folder, tensors=tensors)


class Checkpointer:
    """Saves a run every `every` steps (and when it stops or ends) under `root`, keeping the newest `keep`, and
    restores one (`resume_from`) before the first step.

    `model` is the AdaptedModel, `trained` what the loop trains (DDP / FSDP). `identity` holds the settings a resumed
    run must share with the saved one. Under several processes every process calls the methods; only the main one
    writes.
    """

    def __init__(self, root: Path, model: AdaptedModel, trained: nn.Module, parallel: Parallel, *, every: int,
                 keep: int, identity: dict[str, Any], seed: int, resume_from: Path | None = None) -> None:
        if every < 0 or keep < 1:
            raise TrainConfigError(f"save_every={every} must be >= 0 and keep_checkpoints={keep} >= 1")
        self.root, self.model, self.trained, self.parallel = root, model, trained, parallel
        self.every, self.keep, self.identity, self.seed = every, keep, identity, seed
        self.resume_from = resume_from
        self.saved_step: int | None = None
        self.notes: list[str] = []

    # --- restore ------------------------------------------------------------------------------------------------
    def restore(self, state: LoopState) -> int:
        """Load optimiser, schedule, loss scale, data position and RNG states; the steps the checkpoint had done.
        (Its adapter tensors were loaded with `load_adapters` before the model was wrapped.)"""
        if self.resume_from is None:
            return 0
        manifest = verify(self.resume_from)
        if manifest is None:
            raise CheckpointError(f"{self.resume_from} is not a complete checkpoint")
        check_identity(manifest["run"], self.identity, self.resume_from)
        tensors = load_file(str(self.resume_from / TENSORS))
        load_optimizer_state(self.trained, state.optimizer, under("optimizer", tensors), manifest["optimizer"])
        state.scheduler.load_state_dict(manifest["scheduler"])
        if state.scaler is not None and manifest.get("scaler"):
            state.scaler.load_state_dict(manifest["scaler"])
        if hasattr(state.batches, "load_state_dict"):
            state.batches.load_state_dict({**manifest["data"], **under("data", tensors)})
        step = int(manifest["step"])
        rngs = manifest["rng"]
        if self.parallel.rank < len(rngs):
            load_rng_state(under(f"rng/{self.parallel.rank}", tensors), rngs[self.parallel.rank])
        else:  # resumed on more processes than saved: this one has no saved generators
            seed_everything(self.seed * 1_000_003 + step * 1_009 + self.parallel.rank)
            self.notes.append(f"the checkpoint holds random generators for {len(rngs)} process(es); process "
                              f"{self.parallel.rank} was seeded anew (dropout masks differ from an uninterrupted run)")
        self.saved_step = step
        return step

    # --- save ---------------------------------------------------------------------------------------------------
    def step_done(self, state: LoopState, step: int, *, final: bool, stopping: bool) -> None:
        if final or stopping or (self.every and step % self.every == 0):
            self.save(state, step)

    def save(self, state: LoopState, step: int) -> Path:
        """Write the checkpoint of `step` (collective: every process calls it)."""
        target = self.root / checkpoint_name(step)
        if self.saved_step == step and (target / MANIFEST).exists():
            return target
        if self.parallel.strategy == "fsdp":
            reshard(self.trained)
        optimizer_tensors, optimizer_values = optimizer_state(self.trained, state.optimizer)
        rngs = self.parallel.gather(rng_state())
        data_tensors, data_values = split_state(state.batches.state_dict()) if hasattr(state.batches,
                                                                                       "state_dict") else ({}, {})
        staging = self.root / f".{target.name}.tmp{os.getpid()}"
        if self.parallel.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.parallel.barrier()
        save_adapters(self.model, staging / ADAPTER, self.parallel)
        if self.parallel.is_main:
            tensors = {**prefixed("optimizer", optimizer_tensors), **prefixed("data", data_tensors)}
            for rank, (rng_tensors, _) in enumerate(rngs):
                tensors.update(prefixed(f"rng/{rank}", rng_tensors))
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / TENSORS))
            manifest = {"format": FORMAT, "version": VERSION, "step": step, "world_size": self.parallel.world_size,
                        "run": self.identity, "optimizer": optimizer_values, "scheduler": state.scheduler.state_dict(),
                        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
                        "data": data_values, "rng": [values for _, values in rngs]}
            _publish(staging, target, manifest)
            self._prune(step)
        self.parallel.barrier()
        self.saved_step = step
        return target

    def _prune(self, step: int) -> None:
        """Keep the newest `keep` checkpoints up to `step`; drop later ones (another timeline) and stale staging."""
        for folder in self.root.iterdir():
            if folder.name.startswith(".step-") and folder.name != f".{checkpoint_name(step)}.tmp{os.getpid()}":
                shutil.rmtree(folder, ignore_errors=True)
        kept = 0
        for found_step, folder in sorted(_step_folders(self.root), reverse=True):
            if found_step > step or kept >= self.keep:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                kept += 1


def check_identity(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    """CheckpointError naming every setting in which the checkpoint's run differs from this one."""
    differences = [f"{key}: {saved.get(key)!r} there, {current.get(key)!r} now"
                   for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    if differences:
        raise CheckpointError(f"the checkpoint {folder} is of a run with other settings ({'; '.join(differences)}). "
                              "Use another output folder, or --restart to start this one over")


def _step_folders(root: Path) -> list[tuple[int, Path]]:
    return [(int(m.group(1)), f) for f in root.iterdir() if (m := _STEP_DIR.fullmatch(f.name)) and f.is_dir()]


def _publish(staging: Path, target: Path, manifest: dict[str, Any]) -> None:
    """Sync every file, write the manifest with their sizes and digests, then rename the folder into place."""
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    manifest["files"] = {str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    for path in files:
        _fsync(path)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _fsync(staging / MANIFEST)
    for folder in sorted({p.parent for p in files} | {staging}, key=lambda p: -len(p.parts)):
        _fsync(folder)
    if target.exists():  # a checkpoint of this step from an earlier, interrupted timeline
        shutil.rmtree(target)
    os.replace(staging, target)
    _fsync(target.parent)


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    with contextlib.suppress(OSError):  # some file systems cannot sync folders
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

