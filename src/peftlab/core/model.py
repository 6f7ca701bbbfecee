"""The adapted model: a base model with named adapters, an active set, enable/disable and merge/unmerge."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftlab.compose.weighted_adapter import add_weighted_adapter
from peftlab.core import attach
from peftlab.core.bias_site import BiasDelta
from peftlab.core.config import MethodConfig
from peftlab.core.context import CallContext, current_call, enter_call, exit_call, keep_losses, kept_losses, pending
from peftlab.core.copy_site import CopySite
from peftlab.core.layer import AdaptedLayer
from peftlab.core.merge_plan import check_mergeable, check_stack, innermost_first
from peftlab.core.model_inputs import batch_shape
from peftlab.core.names import as_names, check_adapter_name
from peftlab.core.objectives import Objective
from peftlab.core.routing import Routing, per_sample, per_token, routed
from peftlab.core.sites import ModelAdapter, Site, SiteRole
from peftlab.core.targets import saved_module_paths
from peftlab.core.view import AdapterView, SiteEntry
from peftlab.errors import AdapterStateError, ContractError
from peftlab.io.adapter_files import load_adapter_into, save_adapters


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
        self._sites: dict[str, dict[str, SiteRole]] = {}  # adapter name -> {module path: role}
        self._active: tuple[str, ...] = ()
        self._trainable: tuple[str, ...] = ()
        self._enabled = True
        self.objectives = nn.ModuleDict()
        self.train(base_model.training)
        for param in base_model.parameters():
            param.requires_grad_(False)
        self._hooks = (base_model.register_forward_pre_hook(self._open_call, with_kwargs=True),
                       base_model.register_forward_hook(self._close_call, always_call=True))

    # --- calling ------------------------------------------------------------------------------------------------
    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None,
                adapter_groups: torch.Tensor | None = None,
                group_adapters: Mapping[int, str] | Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Call the base model through the active adapters; or, with `adapter_names` (one adapter name per sample,
        "__base__" for none), each sample through its own adapter; or, with `adapter_groups` ((B, T) group ids)
        and `group_adapters` (group id -> adapter name), each token through its group's adapter. Routed calls are
        checked before anything runs (core/routing.py)."""
        routing = self._routing(args, kwargs, adapter_names, adapter_groups, group_adapters)
        with routed(routing):
            return self.get_base_model()(*args, **kwargs)

    def generate(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The base model's generate(); with `adapter_names`, each sequence with its own adapter (greedy,
        sampling and beam search alike: the expanded rows keep their sample's adapter)."""
        generate = self.get_base_model().generate  # AttributeError for a model without generate(), as before
        routing = self._routing(args, kwargs, adapter_names, None, None)
        with routed(routing):
            return generate(*args, **kwargs)

    def _routing(self, args: tuple, kwargs: dict[str, Any], names: Sequence[str] | None, groups: torch.Tensor | None,
                 group_adapters: Mapping[int, str] | Sequence[str] | None) -> Routing | None:
        """The call's routing, checked against the model's adapters before any computation (None: not routed)."""
        if names is None and groups is None:
            if group_adapters is not None:
                raise AdapterStateError("group_adapters names the adapter of each group in adapter_groups; pass "
                                        "adapter_groups too")
            return None
        if names is not None and groups is not None:
            raise AdapterStateError("pass adapter_names (one adapter per sample) or adapter_groups (one per token), "
                                    "not both")
        if self.merged_adapters:
            raise AdapterStateError(f"adapters {self.merged_adapters} are merged into the base weights, so samples "
                                    "cannot choose their adapter; call unmerge() first")
        if not self._enabled:
            raise AdapterStateError("adapters are disabled (disable_adapters()); route samples outside that block, "
                                    'or use "__base__" for the base model')
        tokens = batch_shape(args, kwargs)
        if groups is not None:
            if group_adapters is None:
                raise AdapterStateError("adapter_groups needs group_adapters: the adapter of each group id")
            routing = per_token(groups, group_adapters, self.adapters, tokens if len(tokens) == 2 else None)
        else:
            routing = per_sample(names, self.adapters, tokens[0] if tokens else None)
        for name in routing.names:
            self._check_routable(name, per_token=groups is not None)
        return routing

    def _check_routable(self, name: str, per_token: bool) -> None:
        view = self.adapter(name)
        method = view.config.card.name
        blocking = next((e for e in view.entries() if not e.site.routable), None)
        if blocking is not None:
            raise AdapterStateError(f"adapter {name!r} ({method}) cannot run beside other adapters in one batch: its "
                                    f"{type(blocking.site).__name__} at {blocking.path!r} has no routed form. Run its "
                                    "samples in a batch of their own (set_adapter)")
        shared = view.model_adapter
        if shared is not None and shared.in_calls and (per_token or not shared.routable):
            kind = "token groups" if per_token else "per-sample adapters"
            raise AdapterStateError(f"adapter {name!r} ({method}) acts on the model's inputs and cannot take part in "
                                    f"{kind}; run its samples in a batch of their own (set_adapter)")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base_model"], name)

    def get_base_model(self) -> nn.Module:
        """The model the adapters are attached to."""
        return self._modules["base_model"]

    def _live_model_adapters(self) -> tuple[str, ...]:
        """The active model adapters that take part in calls (`ModelAdapter.in_calls`); others only hold state."""
        if not self._enabled:
            return ()
        return tuple(n for n in self._active if n in self.model_adapters and self.model_adapters[n].in_calls)

    def _open_call(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Forward pre-hook of the base model: open this call's context (when it needs one) and let the active
        model-level adapters (or, routed, those of the routed adapters) rewrite the inputs."""
        routing = pending().get("routing")
        names = self._live_model_adapters() if routing is None else ()
        observed = tuple(self.objectives.values()) if self._enabled and torch.is_grad_enabled() else ()
        call = CallContext() if names or routing is not None or observed else None
        enter_call(call)  # every call pushes one entry (None: no context), and _close_call pops it
        if call is None:
            return None
        if routing is not None:
            tokens = batch_shape(args, kwargs)
            call.routing = (routing.for_batch(tokens[0]) if tokens and not routing.per_token else routing)
            args, kwargs = self._route_prepare(call, args, kwargs)
        for name in names:
            args, kwargs = self.model_adapters[name].prepare(args, kwargs, call)
            call.prepared += (name,)
        call.observed = observed
        for objective in observed:
            objective.begin(call, kwargs)
        return args, kwargs

    def _close_call(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook of the base model, run even when the call raised: model-level adapters rewrite the
        outputs (last prepared first), and the call's context closes."""
        call = current_call()
        exit_call()
        if call is None or output is None:
            return None
        for name in reversed(call.prepared):
            output = self.model_adapters[name].finish(output, call)
        for kind, adapters in reversed(call.routed_prepared):
            output = kind.route_finish(adapters, output, call)
        for objective in call.observed:
            objective.end(call, output)
        keep_losses(self, call.losses)
        return output

    def _route_prepare(self, call: CallContext, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The routed adapters' model adapters rewrite the inputs, one route_prepare per class."""
        shared = [self.model_adapters[n] if n in self.model_adapters else None  # noqa: SIM401  (ModuleDict)
                  for n in call.routing.names]
        shared = [a if a is not None and a.in_calls else None for a in shared]
        for kind in dict.fromkeys(type(a) for a in shared if a is not None):
            adapters = [a if type(a) is kind else None for a in shared]
            args, kwargs = kind.route_prepare(adapters, call.routing, args, kwargs, call)
            call.routed_prepared.append((kind, adapters))
        return args, kwargs

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

    def adapter(self, name: str) -> AdapterView:
        """A read-only view of adapter `name`: its config, sites (path, role, site, base module), model adapter."""
        self._require(name)
        base = self.get_base_model()
        sites = {}
        for path, role in self._sites[name].items():
            layer: AdaptedLayer = base.get_submodule(path)
            sites[path] = SiteEntry(path, role, layer.adapters[name], layer.base_layer)
        shared = self.model_adapters[name] if name in self.model_adapters else None  # noqa: SIM401  (ModuleDict)
        return AdapterView(name, self.configs[name], sites, shared, base)

    def site_adapters(self, name: str) -> dict[str, tuple[nn.Module, nn.Module]]:
        """{module path: (site adapter, base module)} for one adapter."""
        return {path: (e.site, e.module) for path, e in self.adapter(name).sites.items()}

    def site_kinds(self, name: str) -> dict[str, SiteRole]:
        """{module path: role} for one adapter."""
        self._require(name)
        return dict(self._sites[name])

    def add_adapter(self, adapter_name: str, config: MethodConfig) -> None:
        """Attach a new adapter. The first adapter becomes active; later ones wait for `set_adapter`."""
        check_adapter_name(adapter_name)
        if adapter_name in self.configs:
            raise AdapterStateError(f"an adapter named {adapter_name!r} exists already; delete_adapter() it first "
                                    "or pick another name")
        if not isinstance(config, MethodConfig):
            raise TypeError(f"config must be a method config such as peftlab.LoRA(...), got {type(config).__name__}")
        base = self.get_base_model()
        sites = config.select_sites(base)
        saved = saved_module_paths(base, config)
        shared = config.build_model_adapter(base, sites)
        if shared is not None:
            _check_built(config, shared, config.model_adapter_type, "build_model_adapter")
            self.model_adapters[adapter_name] = shared.train(base.training)
        builders: list[tuple[SiteRole, Sequence[str], Callable[[nn.Module, str], nn.Module]]] = [
            (SiteRole.METHOD, list(sites), lambda module, path: config.build_site(module, path, shared)),
            (SiteRole.BIAS, list(config.bias_only_sites(base, sites)),
             lambda module, path: BiasDelta(module, absolute_in_files=True)),
            (SiteRole.SAVED, saved, lambda module, path: CopySite(module))]
        placed: dict[str, SiteRole] = {}
        try:
            for role, paths, build in builders:
                for path in paths:
                    layer = attach.wrap(base, path)
                    site = build(layer.base_layer, path)
                    if role is SiteRole.METHOD:
                        _check_built(config, site, config.site_types, "build_site")
                    site = attach.place_like(site, layer.base_layer)
                    layer.adapters[adapter_name] = site.train(layer.base_layer.training)
                    placed[path] = role
        except BaseException:
            self._sites[adapter_name] = placed
            self.configs[adapter_name] = config
            self.delete_adapter(adapter_name)
            raise
        self.configs[adapter_name] = config
        self._sites[adapter_name] = placed
        if self._active:
            self.set_adapter(self._active, self.trainable_adapters)
        else:
            self.set_adapter(adapter_name)
        self._reattach_objectives()

    def set_adapter(self, adapter_name: str | Sequence[str], trainable: str | Sequence[str] | None = None) -> None:
        """Make one adapter (or several, applied together: the first outermost) active; `trainable` (default: all
        of them) are trained, every other adapter is frozen. A frozen stack, e.g. PEFTDebias's frozen upstream
        adapter under a new task adapter: set_adapter(["task", "upstream"], trainable="task")."""
        names = as_names(adapter_name)
        if not names:
            raise AdapterStateError(f"set_adapter needs at least one adapter name; this model has {self.adapters}")
        if len(set(names)) != len(names):
            raise AdapterStateError(f"set_adapter got {list(names)}, which names an adapter twice; each active "
                                    "adapter runs once, so name it once")
        for name in names:
            self._require(name)
        chosen = names if trainable is None else as_names(trainable)
        outside = [n for n in chosen if n not in names]
        if outside:
            raise AdapterStateError(f"trainable={list(chosen)} names {outside}, which would not be active; only active "
                                    f"adapters ({list(names)}) can train")
        self._active = names
        self._trainable = chosen
        self._refresh()

    @property
    def trainable_adapters(self) -> tuple[str, ...]:
        """The active adapters whose parameters train (set_adapter's `trainable`)."""
        return tuple(n for n in self._trainable if n in self._active)

    def _refresh(self) -> None:
        live = self._active if self._enabled else ()
        layers = attach.adapted_layers(self.get_base_model())
        for layer in layers.values():
            layer.set_active(live)
            layer.forget_stacks()  # adapters may have come or gone: routed stacks are rebuilt
        for name in self.configs:
            trainable = name in self._active and name in self._trainable
            for param in self._adapter_parameters(name, layers):
                if param.requires_grad != trainable:
                    param.requires_grad_(trainable)

    def _require(self, name: str) -> None:
        if name not in self.configs:
            raise AdapterStateError(f"no adapter named {name!r}; this model has {self.adapters or 'no adapters'}")

    def _adapter_parameters(self, name: str, layers: dict[str, AdaptedLayer] | None = None
                            ) -> Iterator[nn.Parameter]:
        """The adapter's parameters; `layers` (attach.adapted_layers of the base model) saves looking each one up."""
        base = self.get_base_model()
        for path in self._sites[name]:
            layer = layers[path] if layers is not None else base.get_submodule(path)
            yield from layer.adapters[name].parameters()
        if name in self.model_adapters:
            yield from self.model_adapters[name].parameters()

    def delete_adapter(self, adapter_name: str) -> None:
        self._require(adapter_name)
        if adapter_name in self.merged_adapters:
            raise AdapterStateError(f"adapter {adapter_name!r} is merged; call unmerge() before deleting it")
        base = self.get_base_model()
        for path in self._sites.pop(adapter_name):
            layer: AdaptedLayer = base.get_submodule(path)
            del layer.adapters[adapter_name]
            if not len(layer.adapters):
                attach.unwrap(base, path)
        if adapter_name in self.model_adapters:
            del self.model_adapters[adapter_name]
        del self.configs[adapter_name]
        remaining = tuple(n for n in self._active if n != adapter_name)
        self._active = remaining or ((self.adapters[0],) if self.adapters else ())
        self._trainable = tuple(n for n in self._trainable if n != adapter_name) if remaining else self._active
        self._refresh()
        self._reattach_objectives()

    def add_weighted_adapter(self, adapters: str | Sequence[str], weights: Sequence[float], adapter_name: str,
                             combination_type: str | None = None, svd_rank: int | None = None,
                             svd_clamp: float | None = None, density: float | None = None,
                             majority_sign_method: str = "total", seed: int | None = None) -> None:
        """Add `adapter_name`: `adapters` combined with `weights` (negative ones subtract); it is not activated.

        Low-rank adapters (LoRA): combination_type "cat" (exact, rank Σ r_i), "svd" (default: the best
        rank-`svd_rank` approximation of Σ w_i ΔW_i, rank max r_i if not given), "ties_svd" / "dare_linear_svd" /
        "dare_ties_svd" / "magnitude_prune_svd" (prune with `density`, elect signs by `majority_sign_method`, then
        svd), or Hugging Face PEFT's factor-wise "linear" / "ties" / "dare_linear" / "dare_ties" / "magnitude_prune"
        (one rank; rough). Other methods: "linear" (default), the weighted average of same-config adapters. `seed`
        fixes DARE's draws. Equations: peftlab/compose/. Raises AdapterCombineError before anything is added.
        """
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

    # --- objectives ---------------------------------------------------------------------------------------------
    def add_objective(self, name: str, objective: Objective) -> None:
        """Attach a training objective (e.g. peftlab.objectives.DEFT()) whose terms regularization_loss() adds."""
        check_adapter_name(name)
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a peftlab Objective (e.g. peftlab.objectives.DEFT()), got "
                            f"{type(objective).__name__}")
        if name in self.objectives:
            raise AdapterStateError(f"an objective named {name!r} is attached already; remove_objective() it first")
        objective.attach(self)
        self.objectives[name] = objective

    def remove_objective(self, name: str) -> None:
        if name not in self.objectives:
            raise AdapterStateError(f"no objective named {name!r}; attached: {list(self.objectives) or 'none'}")
        self.objectives[name].detach()
        del self.objectives[name]

    def _reattach_objectives(self) -> None:
        """Adding or removing adapters wraps or unwraps modules: objectives observe the modules placed now."""
        for objective in self.objectives.values():
            objective.attach(self)

    def regularization_loss(self) -> torch.Tensor:
        """The loss terms the active adapters add to the training objective: their sites' and model adapters' own
        terms (e.g. KaSA's), plus the terms collected during this thread's last call of the model (activation-based
        objectives). Add it to the task loss: `loss = out.loss + model.regularization_loss()`. Zero when none."""
        terms: list[torch.Tensor] = []
        if self._enabled:
            for name in self._active:
                view = self.adapter(name)
                for entry in view.entries(SiteRole.METHOD):
                    term = entry.site.regularization_loss()
                    if term is not None:
                        terms.append(term)
                if view.model_adapter is not None and (term := view.model_adapter.regularization_loss()) is not None:
                    terms.append(term)
        terms += [t for objective in self.objectives.values() if (t := objective.loss(self)) is not None]
        terms += kept_losses(self)
        if not terms:
            reference = next(self.parameters(), None)
            return torch.zeros((), device=reference.device if reference is not None else None)
        return torch.stack([t.float().reshape(()) for t in terms]).sum()

    # --- merging ------------------------------------------------------------------------------------------------
    @property
    def merged_adapters(self) -> list[str]:
        merged: list[str] = []
        for layer in attach.adapted_layers(self.get_base_model()).values():
            merged += [n for n in layer.merged if n not in merged]
        return merged

    def merge_adapter(self, adapter_names: str | Sequence[str] | None = None, *, exact_unmerge: bool = False) -> None:
        """Fold adapters (default: the active ones) into the base weights, in place; `unmerge()` undoes it.

        Stacked adapters fold innermost first (the last active one first), so the merged model computes what the
        unmerged stack did. A stack that no fold order reproduces is refused (core/merge_plan.py).
        `unmerge()` subtracts (or divides out) each update again, which restores the base weights up to rounding
        (the bound is in docs/api.md). With `exact_unmerge=True` each merged module's tensors are copied first, and
        `unmerge()` restores them bit for bit; the copies take the memory of those tensors until then.
        """
        names = as_names(adapter_names) if adapter_names is not None else self._active
        base = self.get_base_model()
        check_mergeable([self.adapter(name) for name in names], base)
        layers = attach.adapted_layers(base)
        for path in {p for name in names for p in self._sites[name]}:
            check_stack(layers[path], self._active, set(names), path)
        for name in innermost_first(names, self._active):
            for path in self._sites[name]:
                layers[path].merge(name, keep_original=exact_unmerge)
        self._refresh()

    def unmerge(self) -> None:
        """Restore the base weights from every merged adapter."""
        for layer in attach.adapted_layers(self.get_base_model()).values():
            layer.unmerge()
        self._refresh()

    def merge_and_unload(self, adapter_names: str | Sequence[str] | None = None) -> nn.Module:
        """Fold the active adapters into the weights and return the plain base model (its own module types)."""
        self.merge_adapter(adapter_names)
        return self.unload()

    def unload(self) -> nn.Module:
        """Remove every adapter (merged ones stay folded in) and return the base model."""
        base = self.get_base_model()
        for path in attach.adapted_layers(base):
            attach.unwrap(base, path)
        for hook in self._hooks:
            hook.remove()
        self._hooks = ()
        for name in list(self.objectives):
            self.remove_objective(name)
        self.model_adapters.clear()
        self.configs.clear()
        self._sites.clear()
        self._active = ()
        return base

    # --- counting -----------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        """Method, sites adapted, trainable / total parameters and percentage, per adapter."""
        lines = []
        for name, config in self.configs.items():
            view = self.adapter(name)
            n_method = sum(1 for e in view.entries() if e.role in (SiteRole.METHOD, SiteRole.BIAS))
            saved = view.paths(SiteRole.SAVED)
            count = sum(p.numel() for p in view.parameters())
            state = ("active" if name in self._trainable else "active, frozen") if name in self._active else "inactive"
            extra = f", trained in full: {', '.join(saved)}" if saved else ""
            has_tensors = view.model_adapter is not None and any(True for _ in view.model_adapter.parameters())
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
        names = as_names(adapter_names) if adapter_names is not None else tuple(self.adapters)
        save_adapters([self.adapter(name) for name in names], Path(path), allow_non_finite)

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> None:
        """Alias of `save` for code written against Hugging Face PEFT."""
        self.save(save_directory)

    def load_adapter(self, path: str | Path, adapter_name: str = "default", *, allow_non_float: bool = False,
                     allow_non_finite: bool = False) -> None:
        """Read an adapter folder (ours or Hugging Face PEFT's) and add it under `adapter_name`.

        Tensors of another kind than the adapter holds (integer or bool for floats) or holding NaN/infinity are
        refused unless `allow_non_float` / `allow_non_finite` (then loaded with a warning)."""
        load_adapter_into(self, Path(path), adapter_name, allow_non_float, allow_non_finite)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        """Pickling (torch.save(model), multiprocessing): the class made for the base class is rebuilt on load."""
        return _new_adapted, (type(self._modules["base_model"]),), self.__dict__


def _check_built(config: MethodConfig, built: nn.Module, declared: Any, hook: str) -> None:
    """A method's hook returned an instance of a class it declared (site_types / model_adapter_type)."""
    classes = declared if isinstance(declared, tuple) else (declared,) if declared is not None else ()
    if not isinstance(built, classes) or not isinstance(built, (Site, ModelAdapter)):
        raise ContractError(f"method {config.card.id!r}: {hook}() returned a {type(built).__name__}, which is not "
                            f"among the classes it declares ({', '.join(c.__name__ for c in classes) or 'none'})")


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
        return AdaptedModel.forward(self, *args, **kwargs)

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
