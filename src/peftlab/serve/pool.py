"""AdapterPool: thousands of adapters on disk, at most `max_loaded` in memory, requests from many users in one batch
(PEFT-U's per-user adapters; S-LoRA's and LoRAX's serving).

    pool = AdapterPool(base, "adapters/", max_loaded=64)       # one adapter folder per user, named by its folder
    out = pool(["alice", "bob", "alice"], input_ids=ids)        # each row through its user's adapter
    text = pool.generate(["alice", "bob"], input_ids=ids, max_new_tokens=20)

A request names its adapter; the pool loads the ones the batch needs that are not in memory (evicting the least
recently used others beyond `max_loaded`), then runs the batch once, routed (`adapter_names`). "__base__" is the base
model. Every load reads safetensors and JSON only, as peftlab.load does.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from peftlab.core.model import AdaptedModel, adapted_class
from peftlab.core.routing import BASE
from peftlab.errors import AdapterLoadError, AdapterStateError
from peftlab.io.adapter_folder import CONFIG_NAME


@dataclasses.dataclass
class PoolStats:
    """What the pool has done: loads from disk (and their total seconds), evictions, requests served from memory."""

    loads: int = 0
    evictions: int = 0
    hits: int = 0
    load_seconds: float = 0.0


class AdapterPool:
    """A base model with adapters loaded on demand from `adapters`: a folder whose subfolders are adapter folders
    (each named by its subfolder), or a mapping name -> folder, or a list of folders (each named by its folder)."""

    def __init__(self, base: nn.Module, adapters: str | Path | Mapping[str, str | Path] | Sequence[str | Path],
                 max_loaded: int = 64) -> None:
        if not isinstance(max_loaded, int) or isinstance(max_loaded, bool) or max_loaded < 1:
            raise AdapterStateError(f"max_loaded={max_loaded!r} must be an integer >= 1")
        self.max_loaded = max_loaded
        self.folders = _folders(adapters)
        # Adapter names in the model must be identifiers; users' names (folder names) need not be.
        self._internal = {name: f"pool_{i}" for i, name in enumerate(self.folders)}
        self.model: AdaptedModel = base if isinstance(base, AdaptedModel) else adapted_class(type(base))(base)
        self.model.eval()
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()  # least recently used first
        self.stats = PoolStats()

    @property
    def loaded(self) -> list[str]:
        """The adapters in memory, least recently used first."""
        return list(self._recent)

    def ensure(self, names: Sequence[str]) -> None:
        """Have every adapter in `names` in memory (loading the missing ones, evicting the least recently used others
        beyond max_loaded); they become the most recently used."""
        wanted = list(dict.fromkeys(n for n in names if n != BASE))
        unknown = [n for n in wanted if n not in self.folders]
        if unknown:
            raise AdapterStateError(f"the pool has no adapter named {unknown[0]!r} ({len(self.folders)} known, e.g. "
                                    f"{', '.join(list(self.folders)[:3])})")
        if len(wanted) > self.max_loaded:
            raise AdapterStateError(f"one batch needs {len(wanted)} different adapters, more than max_loaded="
                                    f"{self.max_loaded}; split the batch or raise max_loaded")
        for name in wanted:
            if name in self._recent:
                self._recent.move_to_end(name)
                self.stats.hits += 1
                continue
            while len(self._recent) >= self.max_loaded:
                victim = next(n for n in self._recent if n not in wanted)
                self.model.delete_adapter(self._internal[victim])
                del self._recent[victim]
                self.stats.evictions += 1
            began = time.perf_counter()
            self.model.load_adapter(self.folders[name], self._internal[name])
            self.stats.load_seconds += time.perf_counter() - began
            self.stats.loads += 1
            self._recent[name] = None

    def __call__(self, adapter_names: Sequence[str], *args: Any, **inputs: Any) -> Any:
        """The model's output for a batch whose row i uses adapter adapter_names[i]."""
        self.ensure(adapter_names)
        return self.model(*args, adapter_names=self._routed_names(adapter_names), **inputs)

    def generate(self, adapter_names: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        """model.generate for a batch whose sequence i uses adapter adapter_names[i]."""
        self.ensure(adapter_names)
        return self.model.generate(*args, adapter_names=self._routed_names(adapter_names), **kwargs)

    def _routed_names(self, names: Sequence[str]) -> list[str]:
        return [BASE if n == BASE else self._internal[n] for n in names]

    def loaded_bytes(self) -> int:
        """Bytes held by the loaded adapters' parameters and buffers (the base model excluded)."""
        seen: set[int] = set()
        total = 0
        for name in self._recent:
            view = self.model.adapter(self._internal[name])
            modules = [e.site for e in view.entries()] + ([view.model_adapter] if view.model_adapter else [])
            for module in modules:
                for tensor in (*module.parameters(), *module.buffers()):
                    if id(tensor) not in seen:
                        seen.add(id(tensor))
                        total += tensor.numel() * tensor.element_size()
        return total


def _folders(adapters: str | Path | Mapping[str, str | Path] | Sequence[str | Path]) -> dict[str, Path]:
    """name -> adapter folder, checked to exist (their contents are checked when loaded)."""
    if isinstance(adapters, (str, Path)):
        root = Path(adapters)
        if not root.is_dir():
            raise AdapterLoadError(f"{root} is not a folder of adapter folders")
        found = {p.name: p for p in sorted(root.iterdir()) if (p / CONFIG_NAME).is_file()}
        if not found:
            raise AdapterLoadError(f"{root} holds no adapter folders (subfolders with {CONFIG_NAME})")
        return found
    if isinstance(adapters, Mapping):
        found = {str(name): Path(path) for name, path in adapters.items()}
    else:
        found = {Path(p).name: Path(p) for p in adapters}
    missing = [f"{n} ({p})" for n, p in found.items() if not (p / CONFIG_NAME).is_file()]
    if missing:
        raise AdapterLoadError(f"no {CONFIG_NAME} in the folder of adapter {missing[0]}")
    if BASE in found:
        raise AdapterStateError(f"{BASE!r} names the base model; rename that adapter")
    return found
