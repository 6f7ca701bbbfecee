"""The adapted model: a base model with named adapters, an active set, enable/disable and merge/unmerge."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from peftlab.core import attach
from peftlab.core.bias_site import BiasDelta
from peftlab.core.config import MethodConfig
from peftlab.core.copy_site import CopySite
from peftlab.core.layer import AdaptedLayer, MergeableSite
from peftlab.core.targets import modules_to_save_for
from peftlab.errors import AdapterStateError, TargetError

MAX_ADAPTER_NAME_BYTES = 128  # a name becomes a folder name when saved (file systems allow 255 bytes)


def check_adapter_name(name: str) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise AdapterStateError(f"adapter name {name!r} is not a plain identifier (letters, digits, underscores, "
                                "not starting with a digit); choose e.g. 'default' or 'task_a'")
    if len(name.encode("utf-8")) > MAX_ADAPTER_NAME_BYTES:
        raise AdapterStateError(f"adapter name {name[:40]!r}... is {len(name.encode('utf-8'))} bytes long; at most "
                                f"{MAX_ADAPTER_NAME_BYTES} are allowed, as a saved adapter gets a folder of that name")
    # adapters live in ModuleDicts, which refuse the names of their methods and attributes (training, _modules, ...)
    if hasattr(nn.ModuleDict, name) or name in vars(nn.ModuleDict()):
        raise AdapterStateError(f"adapter name {name!r} is the name of a torch module method or attribute; choose "
                                f"another, e.g. '{name.strip('_')}_adapter'")
    return name


class AdaptedModel(nn.Module):
    """A frozen base model with one or more named adapters. Create it with `peftlab.adapt` or `peftlab.load`.

    Attribute access falls through to the base model (`model.config`, `model.generate(...)`), and calling it calls
    the base model, so it drops into any training loop, transformers' Trainer included.
    """

    def __init__(self, base_model: nn.Module) -> None:
        super().__init__()
        self.base_model = base_model
        self.model_adapters = nn.ModuleDict()
        self.configs: dict[str, MethodConfig] = {}
        self._sites: dict[str, dict[str, str]] = {}  # adapter name -> {module path: "method" | "bias" | "saved"}
        self._active: tuple[str, ...] = ()
        self._enabled = True
        self._hook: Any = None
        self._finish_hook: Any = None
        self._prepared: tuple[str, ...] = ()  # model adapters whose prepare() ran in the current call
        self.train(base_model.training)
        for param in base_model.parameters():
            param.requires_grad_(False)

    # --- calling ------------------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base_model"], name)

    def _prepare_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._prepared = ()
        if not self._enabled:
            return None
        prepared = tuple(name for name in self._active if name in self.model_adapters)
        for name in prepared:
            args, kwargs = self.model_adapters[name].prepare(args, kwargs)
        self._prepared = prepared
        return args, kwargs

    def _finish_outputs(self, module: nn.Module, args: tuple, output: Any) -> Any:
        prepared, self._prepared = self._prepared, ()
        for name in reversed(prepared):
            finish = getattr(self.model_adapters[name], "finish", None) if name in self.model_adapters else None
            if finish is not None:
                output = finish(output)
        return output

    # --- adapters -----------------------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self.configs)

    @property
    def active_adapters(self) -> tuple[str, ...]:
        return self._active

    @property
    def active_adapter(self) -> str | None:
        return self._active[0] if self._active else None

    def add_adapter(self, adapter_name: str, config: MethodConfig) -> None:
        """Attach a new adapter. The first adapter becomes active; later ones wait for `set_adapter`."""
        check_adapter_name(adapter_name)
        if adapter_name in self.configs:
            raise AdapterStateError(f"an adapter named {adapter_name!r} exists already; delete_adapter() it first "
                                    "or pick another name")
        if not isinstance(config, MethodConfig):
            raise TypeError(f"config must be a method config such as peftlab.LoRA(...), got {type(config).__name__}")
        base = self.base_model
        sites = config.select_sites(base)
        saved = self._resolve_saved(config)
        shared = config.build_model_adapter(base)
        placed: dict[str, str] = {}
        if shared is not None:
            self.model_adapters[adapter_name] = shared.train(base.training)
            self._ensure_hook()
        builders: list[tuple[str, Sequence[str], Callable[[nn.Module, str], nn.Module]]] = [
            ("method", list(sites), lambda module, path: config.build_site(module, path, shared)),
            ("bias", list(config.bias_only_sites(base, sites)),
             lambda module, path: BiasDelta(module, absolute_in_files=True)),
            ("saved", saved, lambda module, path: CopySite(module))]
        for kind, paths, build in builders:
            for path in paths:
                layer = attach.wrap(base, path)
                site = attach.place_like(build(layer.base_layer, path), layer.base_layer)
                layer.adapters[adapter_name] = site.train(layer.base_layer.training)
                placed[path] = kind
        self.configs[adapter_name] = config
        self._sites[adapter_name] = placed
        self.set_adapter(self._active or (adapter_name,))

    def _resolve_saved(self, config: MethodConfig) -> list[str]:
        wanted = modules_to_save_for(self.base_model, config)
        names = {n for n, _ in self.base_model.named_modules() if n}
        paths: list[str] = []
        for key in wanted:
            hits = [n for n in names if (n == key or n.endswith("." + key)) and ".base_layer" not in n
                    and ".adapters." not in n]
            if not hits and config.modules_to_save is not None:
                raise TargetError(f"modules_to_save entry {key!r} matches no module of the model")
            paths += [h for h in hits if not any(h.startswith(p + ".") for p in hits)]
        return sorted(set(paths))

    def set_adapter(self, adapter_name: str | Sequence[str]) -> None:
        """Make one adapter (or several, applied together) active and trainable; the others are frozen."""
        names = as_names(adapter_name)
        if not names:
            raise AdapterStateError(f"set_adapter needs at least one adapter name; this model has {self.adapters}")
        if len(set(names)) != len(names):
            raise AdapterStateError(f"set_adapter got {list(names)}, which names an adapter twice; each active "
                                    "adapter runs once, so name it once")
        for name in names:
            self._require(name)
        self._active = names
        self._refresh()

    def _refresh(self) -> None:
        live = self._active if self._enabled else ()
        layers = attach.adapted_layers(self.base_model)
        for layer in layers.values():
            layer.set_active(live)
        for name in self.configs:
            trainable = name in self._active
            for param in self._adapter_parameters(name, layers):
                if param.requires_grad != trainable:
                    param.requires_grad_(trainable)

    def _require(self, name: str) -> None:
        if name not in self.configs:
            raise AdapterStateError(f"no adapter named {name!r}; this model has {self.adapters or 'no adapters'}")

    def _adapter_parameters(self, name: str, layers: dict[str, nn.Module] | None = None) -> Iterator[nn.Parameter]:
        """The adapter's parameters; `layers` (attach.adapted_layers of the base model) saves looking each one up."""
        for path in self._sites[name]:
            layer = layers[path] if layers is not None else self.base_model.get_submodule(path)
            yield from layer.adapters[name].parameters()
        if name in self.model_adapters:
            yield from self.model_adapters[name].parameters()

    def site_adapters(self, name: str) -> dict[str, tuple[nn.Module, nn.Module]]:
        """{module path: (site adapter, base module)} for one adapter."""
        self._require(name)
        out = {}
        for path in self._sites[name]:
            layer: AdaptedLayer = self.base_model.get_submodule(path)
            out[path] = (layer.adapters[name], layer.base_layer)
        return out

    def site_kinds(self, name: str) -> dict[str, str]:
        self._require(name)
        return dict(self._sites[name])

    def delete_adapter(self, adapter_name: str) -> None:
        self._require(adapter_name)
        if adapter_name in self.merged_adapters:
            raise AdapterStateError(f"adapter {adapter_name!r} is merged; call unmerge() before deleting it")
        for path in self._sites.pop(adapter_name):
            layer: AdaptedLayer = self.base_model.get_submodule(path)
            del layer.adapters[adapter_name]
            if not len(layer.adapters):
                attach.unwrap(self.base_model, path)
        if adapter_name in self.model_adapters:
            del self.model_adapters[adapter_name]
        del self.configs[adapter_name]
        remaining = tuple(n for n in self._active if n != adapter_name)
        self._active = remaining or ((self.adapters[0],) if self.adapters else ())
        self._refresh()

    def add_weighted_adapter(self, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                             combination_type: str | None = None, svd_rank: int | None = None,
                             svd_clamp: float | None = None, density: float | None = None,
                             majority_sign_method: str = "total", seed: int | None = None) -> None:
        """Add `adapter_name`: `adapters` combined with `weights` (negative ones subtract); it is not activated.

        LoRA: combination_type "cat" (exact, rank Σ r_i), "svd" (default: the best rank-`svd_rank` approximation of
        Σ w_i ΔW_i, rank max r_i if not given), "ties_svd" / "dare_linear_svd" / "dare_ties_svd" /
        "magnitude_prune_svd" (prune with `density`, elect signs by `majority_sign_method`, then svd), or Hugging Face
        PEFT's factor-wise "linear" / "ties" / "dare_linear" / "dare_ties" / "magnitude_prune" (one rank; rough).
        Other methods: "linear" (default), the weighted average of same-config adapters. `seed` fixes DARE's draws.
        Equations: peftlab/compose/. Raises AdapterCombineError before anything is added.
        """
        from peftlab.compose.weighted_adapter import add_weighted_adapter

        add_weighted_adapter(self, adapters, weights, adapter_name, combination_type, svd_rank, svd_clamp, density,
                             majority_sign_method, seed)

    @contextlib.contextmanager
    def disable_adapters(self) -> Iterator[None]:
        """Within this block the model behaves exactly as the base model."""
        if self.merged_adapters:
            raise AdapterStateError(f"adapters {self.merged_adapters} are merged into the base weights, so the base "
                                    "behaviour is not available; call unmerge() first")
        previous, self._enabled = self._enabled, False
        self._refresh()
        try:
            yield
        finally:
            self._enabled = previous
            self._refresh()

    # --- merging ------------------------------------------------------------------------------------------------
    @property
    def merged_adapters(self) -> list[str]:
        merged: list[str] = []
        for layer in attach.adapted_layers(self.base_model).values():
            merged += [n for n in layer.merged if n not in merged]
        return merged

    def _check_mergeable(self, names: Sequence[str]) -> None:
        owners = self._parameter_owners()
        for name in names:
            self._require(name)
            method = self.configs[name].card
            if not method.mergeable:
                raise AdapterStateError(f"adapter {name!r} uses {method.name}, which is not mergeable "
                                        f"({method.kind.value}); it must stay attached. Use the AdaptedModel as is, "
                                        "or unload() to drop it")
            for path, (site, module) in self.site_adapters(name).items():
                if not isinstance(site, MergeableSite):
                    raise AdapterStateError(f"adapter {name!r} at {path!r} cannot be merged")
                for param in module.parameters(recurse=False):
                    shared = [p for p in owners[id(param)] if p != path]
                    if shared:
                        raise AdapterStateError(
                            f"adapter {name!r} cannot be merged: the weights of {path!r} are tied to {shared[0]!r}, "
                            "so folding the update in would change that module too. Keep the adapter unmerged, or "
                            "untie the weights first (e.g. config.tie_word_embeddings=False)")

    def _parameter_owners(self) -> dict[int, list[str]]:
        """Parameter id -> paths of the base modules holding it (several paths: tied weights)."""
        owners: dict[int, list[str]] = {}
        for path, module in self.base_model.named_modules(remove_duplicate=False):
            if isinstance(module, AdaptedLayer):
                continue
            path = path.removesuffix(".base_layer")
            for param in module.parameters(recurse=False):
                owners.setdefault(id(param), []).append(path)
        return owners

    def merge_adapter(self, adapter_names: str | Sequence[str] | None = None, *, exact_unmerge: bool = False) -> None:
        """Fold adapters (default: the active ones) into the base weights, in place; `unmerge()` undoes it.

        Stacked adapters fold innermost first (the last active one first), so the merged model computes what the
        unmerged stack did. A stack that no fold order reproduces is refused (see `_check_stack`).
        `unmerge()` subtracts (or divides out) each update again, which restores the base weights up to rounding
        (the bound is in docs/api.md). With `exact_unmerge=True` each merged module's tensors are copied first, and
        `unmerge()` restores them bit for bit; the copies take the memory of those tensors until then.
        """
        names = as_names(adapter_names) if adapter_names is not None else self._active
        self._check_mergeable(names)
        inner_first = sorted(names, key=lambda n: -self._active.index(n) if n in self._active else -len(self._active))
        layers = attach.adapted_layers(self.base_model)
        for path in {p for name in names for p in self._sites[name]}:
            _check_stack(layers[path], self._active, set(names), path)
        for name in inner_first:
            for path in self._sites[name]:
                layers[path].merge(name, keep_original=exact_unmerge)
        self._refresh()

    def unmerge(self) -> None:
        """Restore the base weights from every merged adapter."""
        for layer in attach.adapted_layers(self.base_model).values():
            layer.unmerge()
        self._refresh()

    def merge_and_unload(self, adapter_names: str | Sequence[str] | None = None) -> nn.Module:
        """Fold the active adapters into the weights and return the plain base model (its own module types)."""
        self.merge_adapter(adapter_names)
        return self.unload()

    def unload(self) -> nn.Module:
        """Remove every adapter (merged ones stay folded in) and return the base model."""
        for path in attach.adapted_layers(self.base_model):
            attach.unwrap(self.base_model, path)
        for hook in (self._hook, self._finish_hook):
            if hook is not None:
                hook.remove()
        self._hook = self._finish_hook = None
        self.configs.clear()
        self._sites.clear()
        self._active = ()
        return self.base_model

    def _ensure_hook(self) -> None:
        if self._hook is None:
            self._hook = self.base_model.register_forward_pre_hook(self._prepare_inputs, with_kwargs=True)
            self._finish_hook = self.base_model.register_forward_hook(self._finish_outputs)

    # --- counting -----------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        """Method, sites adapted, trainable / total parameters and percentage, per adapter."""
        lines = []
        for name, config in self.configs.items():
            kinds = self._sites[name]
            n_method = sum(1 for k in kinds.values() if k in ("method", "bias"))
            saved = [p for p, k in kinds.items() if k == "saved"]
            count = sum(p.numel() for p in self._adapter_parameters(name))
            state = "active" if name in self._active else "inactive"
            extra = f", trained in full: {', '.join(saved)}" if saved else ""
            shared = self.model_adapters[name] if name in self.model_adapters else None  # noqa: SIM401  (ModuleDict)
            has_tensors = shared is not None and any(True for _ in shared.parameters())
            level = ", with model-level tensors" if has_tensors else ""
            lines.append(f"adapter {name!r} ({state}): {config.card.name} at {n_method} site(s){level}{extra}; "
                         f"{count:,} parameters")
        trainable, total = self.trainable_parameters(), self.total_parameters()
        lines.append(f"trainable: {trainable:,} / total: {total:,} ({100.0 * trainable / max(total, 1):.4f}%)")
        return "\n".join(lines)

    # --- files --------------------------------------------------------------------------------------------------
    def save(self, path: str | Path, adapter_names: str | Sequence[str] | None = None, *,
             allow_non_finite: bool = False) -> None:
        """Write each adapter as adapter_config.json + adapter_model.safetensors (Hugging Face PEFT layout).

        The adapter named "default" goes to `path` itself, others to `path/<name>/`, as Hugging Face PEFT does. Each
        folder is written as a unit: a reader sees the old adapter or the new one, never a mix, and a save that fails
        (or finds NaN/infinite values, unless `allow_non_finite`) writes nothing. Other files and subfolders in `path`
        are left alone.
        """
        from peftlab.io.adapter_files import save_adapters

        names = as_names(adapter_names) if adapter_names is not None else tuple(self.adapters)
        for name in names:
            self._require(name)
        save_adapters(self, names, Path(path), allow_non_finite)

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> None:
        """Alias of `save` for code written against Hugging Face PEFT."""
        self.save(save_directory)

    def load_adapter(self, path: str | Path, adapter_name: str = "default", *, allow_non_float: bool = False,
                     allow_non_finite: bool = False) -> None:
        """Read an adapter folder (ours or Hugging Face PEFT's) and add it under `adapter_name`.

        Tensors of another kind than the adapter holds (integer or bool for floats) or holding NaN/infinity are refused
        unless `allow_non_float` / `allow_non_finite` (then loaded with a warning)."""
        from peftlab.io.adapter_files import load_adapter_into

        load_adapter_into(self, Path(path), adapter_name, allow_non_float, allow_non_finite)

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def __reduce_ex__(self, protocol: Any) -> tuple:
        """Pickling (torch.save(model), multiprocessing): the class made for the base class is rebuilt on load."""
        return _new_adapted, (type(self._modules["base_model"]),), self.__dict__


def as_names(value: str | Sequence[str]) -> tuple[str, ...]:
    """One adapter name or several, as a tuple; a plain string is one name, not its letters."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise AdapterStateError(f"expected an adapter name or a list of names, got {value!r}")
    return tuple(value)


def _check_stack(layer: AdaptedLayer, active: tuple[str, ...], merging: set[str], path: str) -> None:
    """Folding `merging` innermost first reproduces the stack at this layer unless an adapter that stays unmerged
    runs inside a merged one (exact only when both only add to the output: LoRA, BitFit, sparse deltas), or a
    merged adapter whose update depends on the base weight (DoRA) has another adapter inside it."""
    chain = [n for n in active if n in layer.adapters and n not in layer.merged]  # outermost first
    for i, name in enumerate(chain):
        if name not in merging:
            continue
        inner = chain[i + 1:]
        site = layer.adapters[name]
        if inner and getattr(site, "reads_base_weight", False):
            raise AdapterStateError(f"cannot merge {name!r} at {path!r}: its update depends on the base weight, and "
                                    f"{inner} run inside it there; activate {name!r} alone to merge it")
        kept = [n for n in inner if n not in merging]
        if kept and not (getattr(site, "additive", False)
                         and all(getattr(layer.adapters[n], "additive", False) for n in kept)):
            raise AdapterStateError(f"cannot merge {name!r} at {path!r} while {kept} stay unmerged inside it: the "
                                    "result would differ from the unmerged model. Merge them together, e.g. "
                                    "merge_adapter() for all active adapters")


@functools.cache
def adapted_class(base_cls: type) -> type[AdaptedModel]:
    """An AdaptedModel subclass whose forward carries the base class's signature.

    transformers' Trainer inspects `type(model).forward` to find label names and to keep dataset columns; with the
    base signature it treats the adapted model exactly like the base model.
    """
    if base_cls.forward is nn.Module.forward:
        return AdaptedModel

    @functools.wraps(base_cls.forward)
    def forward(self: AdaptedModel, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    return type(f"Adapted{base_cls.__name__}", (AdaptedModel,), {"forward": forward, "__module__": __name__})


def _new_adapted(base_cls: type) -> AdaptedModel:
    """An empty instance of the AdaptedModel class for `base_cls`; pickle restores its state."""
    return nn.Module.__new__(adapted_class(base_cls))


def _require_module(model: object, function: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"peftlab.{function} takes a torch.nn.Module (e.g. a transformers model), got "
                        f"{type(model).__name__}")


def _attach(model: nn.Module, function: str, add: Callable[[AdaptedModel], None]) -> AdaptedModel:
    """The AdaptedModel for `model` after `add` ran on it. A base that an AdaptedModel already wraps is refused
    (a second wrapper would share, and overwrite, the first one's adapters); when `add` fails, the base is left
    as it was (trainable flags, hooks)."""
    _require_module(model, function)
    if isinstance(model, AdaptedModel):
        add(model)
        return model
    hooked = any(isinstance(getattr(hook, "__self__", None), AdaptedModel)
                 for hook in model._forward_pre_hooks.values())
    if attach.adapted_layers(model) or hooked:
        raise AdapterStateError(f"this model is already adapted by an AdaptedModel; add adapters to that one "
                                f"(model.add_adapter(name, config) / model.load_adapter(path, name)), or "
                                f"peftlab.{function} a fresh copy of the base model")
    trainable = {p: p.requires_grad for p in model.parameters()}
    adapted = adapted_class(type(model))(model)
    try:
        add(adapted)
    except BaseException:
        adapted.unload()
        for param, flag in trainable.items():
            param.requires_grad_(flag)
        raise
    return adapted


def adapt(model: nn.Module, config: MethodConfig, adapter_name: str = "default") -> AdaptedModel:
    """Freeze `model` and attach one adapter described by `config`; returns the AdaptedModel."""
    return _attach(model, "adapt", lambda adapted: adapted.add_adapter(adapter_name, config))


def load(model: nn.Module, path: str | Path, adapter_name: str = "default", *, allow_non_float: bool = False,
         allow_non_finite: bool = False) -> AdaptedModel:
    """Attach the adapter stored at `path` (peftlab or Hugging Face PEFT files) to `model` (options: see
    `AdaptedModel.load_adapter`)."""
    return _attach(model, "load", lambda adapted: adapted.load_adapter(
        path, adapter_name, allow_non_float=allow_non_float, allow_non_finite=allow_non_finite))


__all__ = ["AdaptedModel", "adapt", "load"]
