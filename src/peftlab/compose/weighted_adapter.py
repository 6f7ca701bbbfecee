"""A new adapter from a weighted combination of existing ones (`AdaptedModel.add_weighted_adapter`).

LoRA adapters combine through their updates ΔW (compose/low_rank.py): "cat" and "svd" exactly (svd up to its rank),
the *_svd rules by pruning and sign election on each ΔW first, and Hugging Face PEFT's factor-wise rules ("linear",
"ties", "dare_linear", "dare_ties", "magnitude_prune") on A and B. LoRA's trainable biases add linearly: Σ w_i Δb_i.
Every other method combines by "linear" only: its tensors are averaged entry by entry, Σ w_i θ_i (task arithmetic for
methods whose effect is linear in their tensors, e.g. BitFit; a weight average, "model soup", for the rest), which
needs adapters of one config.

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
from peftlab.core.model import as_names, check_adapter_name
from peftlab.errors import AdapterCombineError

if TYPE_CHECKING:
    from peftlab.core.config import MethodConfig
    from peftlab.core.model import AdaptedModel

SVD_RULES = tuple(f"{how}_svd" for how in MERGES if how != "linear")
LOW_RANK_RULES = ("cat", "svd", *SVD_RULES, *MERGES)


def add_weighted_adapter(model: AdaptedModel, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                         combination_type: str | None = None, svd_rank: int | None = None,
                         svd_clamp: float | None = None, density: float | None = None,
                         majority_sign_method: str = "total", seed: int | None = None) -> None:
    """Add `adapter_name`, the combination of `adapters` with `weights` (see the module docstring); not activated."""
    adapters = list(as_names(adapters))
    weights = [float(w) for w in _weights(weights, adapters)]
    configs = _check_adapters(model, adapters, adapter_name)
    low_rank = configs[0].combines_low_rank
    how = combination_type or ("svd" if low_rank else "linear")
    _check_rule(how, low_rank, configs[0], svd_rank, svd_clamp, density, majority_sign_method)
    saved = _saved_sources(model, adapters)
    if low_rank:
        rank = _new_rank(configs, how, svd_rank)
        _check_same(configs, ("bias", "fan_in_fan_out"))
        paths = sorted({p for name in adapters for p, kind in model.site_kinds(name).items() if kind == "method"})
        new = configs[0].replace(targets=tuple(paths), target_types=(), layers=None, exclude=None, r=rank,
                                 alpha=float(rank), use_rslora=False, rank_pattern={}, alpha_pattern={},
                                 init="default", modules_to_save=tuple(sorted(saved)))
    else:
        _check_same(configs, tuple(configs[0].to_dict()))
        new = configs[0]
    generator = None
    model.add_adapter(adapter_name, new)
    try:
        with torch.no_grad():
            for path, (site, _) in model.site_adapters(adapter_name).items():
                sources = [_site(model, name, path) for name in adapters]
                if path in saved:
                    site.load_state_dict(sources[adapters.index(saved[path])].state_dict())
                    continue
                if low_rank and hasattr(site, "factors"):
                    generator = generator or _generator(seed, site)
                    _combine_factors(site, sources, weights, how, rank, svd_clamp, density or 1.0,
                                     majority_sign_method, generator)
                _combine_linear(site, sources, weights, skip_factors=low_rank)
            if adapter_name in model.model_adapters:
                _combine_linear(model.model_adapters[adapter_name], [model.model_adapters[n] for n in adapters],
                                weights, skip_factors=False)
    except BaseException:
        model.delete_adapter(adapter_name)  # nothing half-built is left behind
        raise


def _weights(weights: Sequence[float], adapters: list[str]) -> Sequence[float]:
    if len(weights) != len(adapters):
        raise AdapterCombineError(f"got {len(adapters)} adapters but {len(weights)} weights; give one weight per "
                                  "adapter")
    for w in weights:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise AdapterCombineError(f"weight {w!r} is not a finite number")
    return weights


def _check_adapters(model: AdaptedModel, adapters: list[str], adapter_name: str) -> list[MethodConfig]:
    if not adapters:
        raise AdapterCombineError("no adapters to combine; pass the names of one or more existing adapters")
    for name in adapters:
        model._require(name)
    if len(set(adapters)) != len(adapters):
        raise AdapterCombineError(f"adapters {adapters} name one adapter twice; give each once, with its total weight")
    check_adapter_name(adapter_name)
    if adapter_name in model.adapters:
        raise AdapterCombineError(f"an adapter named {adapter_name!r} exists already; pick a new name for the "
                                  "combination")
    configs = [model.configs[name] for name in adapters]
    methods = sorted({c.card.id for c in configs})
    if len(methods) > 1:
        raise AdapterCombineError(f"adapters {adapters} use different methods ({', '.join(methods)}); only adapters "
                                  "of one method combine")
    return configs


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


def _new_rank(configs: list[MethodConfig], how: str, svd_rank: int | None) -> int:
    ranks = [max([c.r, *c.rank_pattern.values()]) for c in configs]
    if how == "cat":
        return sum(ranks)
    if how.endswith("svd"):
        return svd_rank or max(ranks)
    if len(set(ranks)) > 1:
        raise AdapterCombineError(f"combination_type={how!r} combines A and B factor by factor, which needs one rank; "
                                  f"the ranks are {ranks}. Use 'cat' or 'svd' (exact) instead")
    return ranks[0]


def _saved_sources(model: AdaptedModel, adapters: list[str]) -> dict[str, str]:
    """{module path: the one adapter that trains the module in full}."""
    owners: dict[str, list[str]] = {}
    for name in adapters:
        for path, kind in model.site_kinds(name).items():
            if kind == "saved":
                owners.setdefault(path, []).append(name)
    shared = {path: names for path, names in owners.items() if len(names) > 1}
    if shared:
        path, names = next(iter(shared.items()))
        raise AdapterCombineError(f"adapters {names} each train their own copy of {path!r} (modules_to_save), and "
                                  "two trained copies of a module cannot be combined; combine adapters trained with "
                                  "modules_to_save=() or that train different modules")
    return {path: names[0] for path, names in owners.items()}


def _site(model: AdaptedModel, name: str, path: str) -> nn.Module | None:
    layer = model.base_model.get_submodule(path)
    return layer.adapters[name] if name in layer.adapters else None  # noqa: SIM401  (a ModuleDict has no .get)


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


def _combine_linear(target: nn.Module, sources: list[nn.Module | None], weights: list[float],
                    skip_factors: bool) -> None:
    """target's tensors = Σ w_i (source i's), over the sources that have the site; integer tensors must agree."""
    factors = {id(t) for t in target.factors()} if skip_factors and hasattr(target, "factors") else set()
    present = [(s.state_dict(), w) for s, w in zip(sources, weights) if s is not None]
    for key, tensor in target.state_dict(keep_vars=True).items():
        if id(tensor) in factors:
            continue
        values = [state[key] for state, _ in present]
        if tensor.is_floating_point():
            tensor.copy_(merge(values, [w for _, w in present], "linear"))
        elif any(not torch.equal(v, values[0]) for v in values[1:]):
            raise AdapterCombineError(f"the adapters' {key!r} differ (an index or mask, not a weight), so they cannot "
                                      "be averaged; only adapters built the same way combine")
        else:
            tensor.copy_(values[0])
