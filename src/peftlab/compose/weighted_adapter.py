"""A new adapter from a weighted combination of existing ones (`AdaptedModel.add_weighted_adapter`).

Adapters whose sites are all low-rank (core.sites.LowRankSite: ΔW = s · B A exactly, i.e. LoRA) combine through
their updates ΔW (compose/low_rank.py) into a new LoRA adapter: "cat" and "svd" exactly (svd up to its rank), the
*_svd rules by pruning and sign election on each ΔW first, and Hugging Face PEFT's factor-wise rules ("linear",
"ties", "dare_linear", "dare_ties", "magnitude_prune") on A and B. Trainable biases add linearly: Σ w_i Δb_i.
Every other method combines by "linear" only, which needs adapters of one config, parameter by parameter (after
"Composing Parameter-Efficient Modules with Arithmetic Operations", Zhang et al. 2023):
    an effect parameter (core.sites.Site.effect_parameters: one the adapter's effect is linear in, with the value
    ν at which it does nothing)       θ = ν + Σ w_i (θ_i − ν)      so w = −1 negates: IA3's l -> 2 − l, BitFit's
                                                                   Δb -> −Δb, a bottleneck's up -> −up, VeRA's Λ_b
    any other parameter               θ = Σ |w_i| θ_i / Σ |w_i|    (a weighted average; unchanged by negation)
Frozen buffers (masks, indices, projections) must be equal. A method without effect parameters (DoRA, LoReFT,
prompt and prefix tuning) only averages: negative weights are refused. Hugging Face PEFT's IA3 rule is Σ w_i l_i,
the same when the weights sum to 1; otherwise it scales the activations by about Σ w_i, which the rule above does
not. Adapters of different methods do not combine into one adapter: stack them (set_adapter([a, b])).

A module that several of the adapters train in full (modules_to_save, e.g. a classification head) cannot be
combined; a module that one of them trains is copied from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from peftlab.compose.low_rank import LowRank, concatenate, factorwise, truncated_svd
from peftlab.compose.merging import MERGES, PRUNING, SIGN_METHODS, merge
from peftlab.core.config import MethodConfig
from peftlab.core.names import as_names, check_adapter_name
from peftlab.core.sites import LowRankSite, SiteRole
from peftlab.core.view import AdapterView
from peftlab.errors import AdapterCombineError
from peftlab.methods.lora import LoRA

if TYPE_CHECKING:
    from peftlab.core.model import AdaptedModel

SVD_RULES = tuple(f"{how}_svd" for how in MERGES if how != "linear")
LOW_RANK_RULES = ("cat", "svd", *SVD_RULES, *MERGES)


def add_weighted_adapter(model: AdaptedModel, adapters: str | Sequence[str], weights: Sequence[float],
                         adapter_name: str, combination_type: str | None = None, svd_rank: int | None = None,
                         svd_clamp: float | None = None, density: float | None = None,
                         majority_sign_method: str = "total", seed: int | None = None) -> None:
    """Add `adapter_name`, the combination of `adapters` with `weights` (see the module docstring); not activated."""
    names = list(as_names(adapters))
    weights = [float(w) for w in _weights(weights, names)]
    views = _check_adapters(model, names, adapter_name)
    method_sites = [e.site for v in views for e in v.entries(SiteRole.METHOD)]
    low_rank = bool(method_sites) and all(isinstance(site, LowRankSite) for site in method_sites)
    configs = [v.config for v in views]
    how = combination_type or ("svd" if low_rank else "linear")
    _check_rule(how, low_rank, configs[0], svd_rank, svd_clamp, density, majority_sign_method)
    if min(weights) < 0 and not low_rank:
        _check_negatable(views)
    saved = _saved_sources(views)
    if low_rank:
        rank = _new_rank(views, how, svd_rank)
        new: MethodConfig = LoRA(targets=tuple(sorted({p for v in views for p in v.paths(SiteRole.METHOD)})), r=rank,
                                 alpha=float(rank), bias=_same_bias(views), modules_to_save=tuple(sorted(saved)))
    else:
        _check_same(configs, tuple(configs[0].to_dict()))
        new = configs[0]
    generator = None
    model.add_adapter(adapter_name, new)
    try:
        with torch.no_grad():
            combined = model.adapter(adapter_name)
            for path, entry in combined.sites.items():
                sources = [_site(v, path) for v in views]
                if path in saved:
                    entry.site.load_state_dict(sources[names.index(saved[path])].state_dict())
                    continue
                if isinstance(entry.site, LowRankSite):
                    generator = generator or _generator(seed, entry.site)
                    _combine_factors(entry.site, sources, weights, how, rank, svd_clamp, density or 1.0,
                                     majority_sign_method, generator)
                _combine_linear(entry.site, sources, weights)
            if combined.model_adapter is not None:
                _combine_linear(combined.model_adapter, [v.model_adapter for v in views], weights)
    except BaseException:
        model.delete_adapter(adapter_name)  # nothing half-built is left behind
        raise


def _check_negatable(views: list[AdapterView]) -> None:
    view = views[0]
    blocking = next((type(e.site).__name__ for e in view.entries(SiteRole.METHOD) if not e.site.effect_parameters),
                    None)
    if blocking is None and view.model_adapter is not None and any(True for _ in view.model_adapter.parameters()):
        blocking = type(view.model_adapter).__name__
    if blocking is not None:
        raise AdapterCombineError(f"negative weights negate an adapter, which is not defined for "
                                  f"{view.config.card.name} ({blocking} has no parameter its effect is linear in); "
                                  "use non-negative weights (a weighted average)")


def _weights(weights: Sequence[float], adapters: list[str]) -> Sequence[float]:
    if len(weights) != len(adapters):
        raise AdapterCombineError(f"got {len(adapters)} adapters but {len(weights)} weights; give one weight per "
                                  "adapter")
    for w in weights:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise AdapterCombineError(f"weight {w!r} is not a finite number")
    return weights


def _check_adapters(model: AdaptedModel, adapters: list[str], adapter_name: str) -> list[AdapterView]:
    if not adapters:
        raise AdapterCombineError("no adapters to combine; pass the names of one or more existing adapters")
    views = [model.adapter(name) for name in adapters]
    if len(set(adapters)) != len(adapters):
        raise AdapterCombineError(f"adapters {adapters} name one adapter twice; give each once, with its total weight")
    check_adapter_name(adapter_name)
    if adapter_name in model.adapters:
        raise AdapterCombineError(f"an adapter named {adapter_name!r} exists already; pick a new name for the "
                                  "combination")
    methods = sorted({v.config.card.id for v in views})
    if len(methods) > 1:
        raise AdapterCombineError(f"adapters {adapters} use different methods ({', '.join(methods)}); only adapters "
                                  "of one method combine")
    return views


def _check_rule(how: str, low_rank: bool, config: MethodConfig, svd_rank: int | None, svd_clamp: float | None,
                density: float | None, sign_method: str) -> None:
    allowed = LOW_RANK_RULES if low_rank else ("linear",)
    if how not in allowed:
        raise AdapterCombineError(f"combination_type={how!r} is not available for {config.card.name} adapters; "
                                  f"choose one of {allowed}")
    base = how.removesuffix("_svd")
    if base in PRUNING:
        if density is None or not 0.0 < density <= 1.0:
            raise AdapterCombineError(f"combination_type={how!r} needs density in (0, 1] (the fraction of entries "
                                      f"kept), got {density!r}")
    elif density is not None:
        raise AdapterCombineError(f"density applies to {PRUNING} and their _svd forms, not to {how!r}; drop it")
    if sign_method not in SIGN_METHODS:
        raise AdapterCombineError(f"majority_sign_method must be one of {SIGN_METHODS}, got {sign_method!r}")
    if not how.endswith("svd") and (svd_rank is not None or svd_clamp is not None):
        raise AdapterCombineError(f"svd_rank and svd_clamp apply to the svd rules, not to {how!r}; drop them")
    if svd_rank is not None and (not isinstance(svd_rank, int) or svd_rank < 1):
        raise AdapterCombineError(f"svd_rank must be an integer >= 1, got {svd_rank!r}")
    if svd_clamp is not None and not 0.0 < svd_clamp <= 1.0:
        raise AdapterCombineError(f"svd_clamp is a quantile in (0, 1], got {svd_clamp!r}")


def _check_same(configs: list[MethodConfig], fields: tuple[str, ...]) -> None:
    first = configs[0].to_dict()
    for config in configs[1:]:
        other = config.to_dict()
        differ = [f for f in fields if f != "method" and first.get(f) != other.get(f)]
        if differ:
            shown = ", ".join(f"{f} ({first.get(f)!r} against {other.get(f)!r})" for f in differ)
            raise AdapterCombineError(f"the adapters differ in {shown}; this combination needs them equal")


def _same_bias(views: list[AdapterView]) -> str:
    """The LoRA `bias` option that trains the biases the low-rank adapters train (they must agree)."""
    def bias(view: AdapterView) -> str:
        if any(True for _ in view.entries(SiteRole.BIAS)):
            return "all"
        return "lora_only" if any(e.site.trained_bias() is not None for e in view.entries(SiteRole.METHOD)) else "none"

    found = [bias(v) for v in views]
    if len(set(found)) > 1:
        raise AdapterCombineError(f"the adapters train biases differently ({', '.join(map(repr, found))}); only "
                                  "adapters with the same bias option combine")
    return found[0]


def _new_rank(views: list[AdapterView], how: str, svd_rank: int | None) -> int:
    ranks = [max(e.site.factors()[0].shape[0] for e in v.entries(SiteRole.METHOD)) for v in views]
    if how == "cat":
        return sum(ranks)
    if how.endswith("svd"):
        return svd_rank or max(ranks)
    if len(set(ranks)) > 1:
        raise AdapterCombineError(f"combination_type={how!r} combines A and B factor by factor, which needs one rank; "
                                  f"the ranks are {ranks}. Use 'cat' or 'svd' (exact) instead")
    return ranks[0]


def _saved_sources(views: list[AdapterView]) -> dict[str, str]:
    """{module path: the one adapter that trains the module in full}."""
    owners: dict[str, list[str]] = {}
    for view in views:
        for path in view.paths(SiteRole.SAVED):
            owners.setdefault(path, []).append(view.name)
    shared = {path: names for path, names in owners.items() if len(names) > 1}
    if shared:
        path, names = next(iter(shared.items()))
        raise AdapterCombineError(f"adapters {names} each train their own copy of {path!r} (modules_to_save), and "
                                  "two trained copies of a module cannot be combined; combine adapters trained with "
                                  "modules_to_save=() or that train different modules")
    return {path: names[0] for path, names in owners.items()}


def _site(view: AdapterView, path: str) -> nn.Module | None:
    entry = view.sites.get(path)
    return entry.site if entry is not None else None


def _generator(seed: int | None, site: nn.Module) -> torch.Generator:
    device = next(site.parameters()).device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _combine_factors(site: nn.Module, sources: list[nn.Module | None], weights: list[float], how: str, rank: int,
                     svd_clamp: float | None, density: float, sign_method: str,
                     generator: torch.Generator) -> None:
    parts = [None if s is None else _low_rank(s) for s in sources]
    if how == "cat":
        a, b = concatenate(parts, weights, rank)
    elif how.endswith("svd"):
        base = "linear" if how == "svd" else how.removesuffix("_svd")
        present = [(p.delta(), w) for p, w in zip(parts, weights) if p is not None]
        delta = merge([d for d, _ in present], [w for _, w in present], base, density, sign_method, generator)
        a, b = truncated_svd(delta, rank, svd_clamp)
    else:
        a, b = factorwise(parts, weights, how, density, sign_method, generator)
    new_a, new_b = site.factors()
    new_a.copy_(a.reshape(new_a.shape))  # (rank, k) -> A's own shape (a conv's (rank, d_in, kh, kw))
    new_b.copy_(b.reshape(new_b.shape))  # (d_out, rank) -> B's own shape (a conv's (d_out, rank, 1, 1))


def _low_rank(site: nn.Module) -> LowRank:
    a, b = site.factors()
    return LowRank(a.detach().flatten(1), b.detach().flatten(1), site.scaling)  # A (r, k), B (d_out, r)


def _combine_linear(target: nn.Module, sources: list[nn.Module | None], weights: list[float]) -> None:
    """target's parameters from the sources that have the site (module docstring): effect parameters
    ν + Σ w_i (θ_i − ν), the others the |w|-weighted average; a low-rank site's factors are combined by
    _combine_factors, so skipped; buffers (masks, indices, frozen projections) must agree."""
    factors = {id(t) for t in target.factors()} if isinstance(target, LowRankSite) else set()
    effect = getattr(type(target), "effect_parameters", {})  # model adapters have none
    present = [(s, w) for s, w in zip(sources, weights) if s is not None]
    total = sum(abs(w) for _, w in present) or 1.0
    for key, tensor in target.named_parameters():
        if id(tensor) in factors:
            continue
        values = [dict(s.named_parameters())[key].detach() for s, _ in present]
        if not tensor.is_floating_point():
            _copy_equal(tensor, values, key)
        elif key in effect:
            neutral = effect[key]
            tensor.copy_(merge([v - neutral for v in values], [w for _, w in present], "linear") + neutral)
        else:
            tensor.copy_(merge(values, [abs(w) / total for _, w in present], "linear"))
    for key, tensor in target.named_buffers():
        _copy_equal(tensor, [dict(s.named_buffers())[key] for s, _ in present], key)


def _copy_equal(tensor: torch.Tensor, values: list[torch.Tensor], key: str) -> None:
    if any(not torch.equal(v, values[0]) for v in values[1:]):
        raise AdapterCombineError(f"the adapters' {key!r} differ (a frozen tensor: an index, mask or projection, not "
                                  "a trained weight), so they cannot be averaged; only adapters built the same way "
                                  "combine")
    tensor.copy_(values[0])
