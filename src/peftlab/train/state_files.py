"""Training state as safetensors tensors plus JSON values: nothing in a checkpoint is read with pickle.

Each function returns (tensors, values): tensors go to one safetensors file under "/"-separated keys, values
(plain numbers, strings, lists) to checkpoint.json. The inverse functions take both back.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

Tensors = dict[str, torch.Tensor]


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Tensors, dict[str, Any]]:
    """The optimiser's state keyed by parameter name (whole tensors, also under FSDP; on CPU): the same file
    resumes on any number of processes. Collective under several processes: call on every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tensors: Tensors = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, entries in full.get("state", {}).items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    return tensors, {"param_groups": full.get("param_groups", []), "scalars": scalars}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, tensors: Tensors,
                         values: dict[str, Any]) -> None:
    """Put a saved optimiser state back (every process passes the whole state; FSDP keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, entry = key.rpartition("/")
        state.setdefault(name, {})[entry] = value
    for name, entries in values["scalars"].items():
        state.setdefault(name, {}).update(entries)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in values["param_groups"]]
    set_optimizer_state_dict(model, optimizer, optim_state_dict={"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))


def rng_state() -> tuple[Tensors, dict[str, Any]]:
    """This process's random number generators: torch (CPU, every CUDA device, MPS), NumPy and Python."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors: Tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        tensors["mps"] = torch.mps.get_rng_state()
    values = {"python": [version, list(words), gauss],
              "numpy": {"kind": kind, "position": int(position), "has_gauss": int(has_gauss),
                        "cached_gaussian": float(cached)}}
    return tensors, values


def load_rng_state(tensors: Tensors, values: dict[str, Any]) -> None:
    """Set this process's generators to a state from `rng_state`."""
    version, words, gauss = values["python"]
    random.setstate((version, tuple(words), gauss))
    numpy = values["numpy"]
    np.random.set_state((numpy["kind"], tensors["numpy"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if "mps" in tensors and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["mps"])


def split_state(state: dict[str, Any]) -> tuple[Tensors, dict[str, Any]]:
    """A flat state dict (a data position, a scheduler's) as (its tensors, its other values)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, {k: v for k, v in state.items() if k not in tensors}


def prefixed(prefix: str, tensors: Tensors) -> Tensors:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def under(prefix: str, tensors: Tensors) -> Tensors:
    """The tensors saved with `prefixed(prefix, ...)`, without the prefix."""
    start = prefix + "/"
    return {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}
