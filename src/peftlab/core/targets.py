"""Target selection: which modules of a model a method adapts.

Semantics follow Hugging Face PEFT where it has them: a list matches exact names or name suffixes (at a dot
boundary), a string is a regex that must match the whole module name, "all-linear" is every Linear-like layer except
the output head. On top: module types, layer indices and exclusions. A spec that matches nothing, or names a module
the method cannot adapt, raises TargetError listing the module names that come closest.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from torch import nn

from peftlab.core.attach import logical_path
from peftlab.core.layer import AdaptedLayer
from peftlab.errors import TargetError

if TYPE_CHECKING:
    from peftlab.core.config import MethodConfig, TargetSpec

ALL_LINEAR = "all-linear"
# Module names (last component, or first for a head block) of output heads: never picked by "all-linear" or by default.
HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs", "cls", "head")
AUTO_SAVED_HEADS = ("classifier", "score")
LAYER_CONTAINERS = ("layers", "layer", "h", "blocks", "block", "encoder_layers", "stages")
# The projections that end each feed-forward sublayer (BERT/RoBERTa, DistilBERT, Llama-style, GPT-2): their input is
# the sublayer's intermediate activation.
FEEDFORWARD_OUTPUTS = r"(?:.*\.)?(?:layer\.\d+\.output\.dense|ffn\.lin2|mlp\.down_proj|mlp\.c_proj)"
_LAYER_INDEX = re.compile(rf"(?:^|\.)(?:{'|'.join(LAYER_CONTAINERS)})\.(\d+)(?:\.|$)")


def linear_types() -> tuple[type, ...]:
    """nn.Linear plus transformers' GPT-2 style Conv1D when transformers is installed."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain PyTorch models
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def stores_weight_transposed(module: nn.Module) -> bool:
    """True for transformers' Conv1D (GPT-2), a linear layer whose weight is stored (d_in, d_out): the layout Hugging
    Face PEFT calls fan_in_fan_out."""
    return isinstance(module, linear_types()) and not isinstance(module, nn.Linear)


def layer_index(name: str) -> int | None:
    """The transformer layer index in a module name ("encoder.layer.3.attention" -> 3), or None."""
    found = _LAYER_INDEX.findall(name)
    return int(found[-1]) if found else None


def name_matches(name: str, spec: TargetSpec) -> bool:
    """Whether a module name matches a target spec (regex string: full match; list: exact name or suffix)."""
    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == key or name.endswith("." + key) for key in spec)


def candidate_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every named module a method may adapt: the model's own modules under their own paths, seen through any
    peftlab wrapper (a wrapper's adapters are not candidates; the modules inside its base module are)."""
    skip: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix) for prefix in skip):
            continue
        if isinstance(module, AdaptedLayer):
            skip.append(name + ".adapters.")
            yield logical_path(name), module.base_layer
        elif not name.endswith(".base_layer"):
            yield logical_path(name), module


def is_head(model: nn.Module, name: str, module: nn.Module) -> bool:
    """Whether a module is (part of) the model's output head."""
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            out = get_out()
        except (NotImplementedError, AttributeError):
            out = None
        if out is not None and (out is module or getattr(out, "base_layer", None) is module):
            return True
    first, last = name.split(".")[0], name.split(".")[-1]
    return first in HEAD_NAMES or last in HEAD_NAMES


def auto_modules_to_save(model: nn.Module) -> tuple[str, ...]:
    """The head a classification model adds on top of a pretrained body, trained and saved with every adapter."""
    cls_name = type(model).__name__
    if not any(cls_name.endswith(s) for s in ("ForSequenceClassification", "ForTokenClassification",
                                             "ForImageClassification", "ForAudioClassification",
                                             "ForQuestionAnswering", "ForMultipleChoice")):
        return ()
    children = dict(model.named_children())
    return tuple(name for name in AUTO_SAVED_HEADS + ("qa_outputs",) if name in children)


def modules_to_save_for(model: nn.Module, config: MethodConfig) -> tuple[str, ...]:
    return config.modules_to_save if config.modules_to_save is not None else auto_modules_to_save(model)


def saved_module_paths(model: nn.Module, config: MethodConfig) -> list[str]:
    """The paths of the modules `config` trains in full (modules_to_save), outermost only; TargetError for an
    entry the user named that matches nothing."""
    wanted = modules_to_save_for(model, config)
    names = {n for n, _ in candidate_modules(model)}
    paths: list[str] = []
    for key in wanted:
        hits = [n for n in names if n == key or n.endswith("." + key)]
        if not hits and config.modules_to_save is not None:
            raise TargetError(f"modules_to_save entry {key!r} matches no module of the model")
        paths += [h for h in hits if not any(h.startswith(p + ".") for p in hits)]
    return sorted(set(paths))


def select_modules(model: nn.Module, config: MethodConfig) -> dict[str, nn.Module]:
    """The modules `config` adapts in `model`, by name. Raises TargetError when the spec does not fit the model."""
    # Types alone select by type; otherwise a method's default targets stand in for missing ones.
    targets = config.targets if config.targets is not None or config.target_types else config.default_targets
    saved = modules_to_save_for(model, config)
    named = [(n, m) for n, m in candidate_modules(model) if not name_matches(n, saved) and
             not any(n.startswith(s + ".") for s in saved)]
    selected: dict[str, nn.Module] = {}
    for name, module in named:
        if targets == ALL_LINEAR:
            hit = isinstance(module, linear_types()) and not is_head(model, name, module)
        elif targets is not None:
            hit = name_matches(name, targets)
        else:  # no targets and no default: every module the method supports, except the output head
            hit = not is_head(model, name, module)
        if hit and config.target_types:  # a type or any subclass of it (e.g. a Conv2d with "same" padding)
            hit = any(cls.__name__ in config.target_types for cls in type(module).__mro__)
        if not hit:
            continue
        if config.layers is not None and layer_index(name) not in config.layers:
            continue
        if config.exclude is not None and name_matches(name, config.exclude):
            continue
        selected[name] = module
    by_type = targets == ALL_LINEAR or targets is None
    unsupported = {n: m for n, m in selected.items() if not config.supports(m)}
    if unsupported and not by_type:
        name, module = next(iter(unsupported.items()))
        inside = [n for n, m in named if n.startswith(name + ".") and config.supports(m)][:5]
        hint = (f"Name the layers inside it instead, e.g. {inside}" if inside
                else f"{config.card.name} adapts {config.card.inserted_at}; peftlab has no {config.card.name} for "
                     f"{_kind(module)} layers, so leave them out of the targets.")
        raise TargetError(
            f"{config.card.id} cannot adapt {name!r} ({_kind(module)}); "
            f"{len(unsupported)} matched module(s) are of a kind it does not support. {hint}")
    selected = {n: m for n, m in selected.items() if n not in unsupported}
    if not selected:
        overlap = [n for n, _ in candidate_modules(model) if (n in saved or name_matches(n, saved))
                   and targets not in (None, ALL_LINEAR) and name_matches(n, targets)]
        if overlap:
            raise TargetError(f"{config.card.id}: targets={targets!r} match only modules that modules_to_save trains "
                              f"in full ({', '.join(overlap[:3])}); a module is either adapted or trained in full: "
                              "drop it from one of the two")
        raise TargetError(_nothing_matched(config, targets, named))
    return selected


def _kind(module: nn.Module) -> str:
    """The module's type, with its groups when it is a grouped convolution (which LoRA and DoRA do not adapt)."""
    groups = getattr(module, "groups", 1)
    return type(module).__name__ + (f", groups={groups}" if isinstance(groups, int) and groups != 1 else "")


def _nothing_matched(config: MethodConfig, targets: TargetSpec, named: list[tuple[str, nn.Module]]) -> str:
    names = [n for n, _ in named]
    suffixes = sorted({n.split(".")[-1] for n in names})
    wanted = [targets] if isinstance(targets, str) else list(targets or [])
    close: list[str] = []
    for key in wanted:
        close += difflib.get_close_matches(key, suffixes, n=3, cutoff=0.5)
        close += difflib.get_close_matches(key, names, n=2, cutoff=0.5)
    close = list(dict.fromkeys(close))[:6] or [n for n, m in named if config.supports(m)][:6]
    filters = []
    if config.target_types:
        filters.append(f"target_types={list(config.target_types)}")
    if config.layers is not None:
        filters.append(f"layers={list(config.layers)}")
    if config.exclude is not None:
        filters.append(f"exclude={config.exclude!r}")
    extra = f" with {', '.join(filters)}" if filters else ""
    if not close:
        return (f"{config.card.id}: targets={targets!r}{extra} matched nothing: no module of this model is of a kind "
                f"{config.card.name} adapts ({config.card.inserted_at}); choose another method for this model")
    return (f"{config.card.id}: targets={targets!r}{extra} matched no module it can adapt. "
            f"Closest module names in this model: {', '.join(close)}")
