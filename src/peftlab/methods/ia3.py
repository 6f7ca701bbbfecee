"""(IA)³: y = l ⊙ (W x + b) at key/value sites, y = W (l ⊙ x) + b at feed-forward sites   (Liu et al., 2022,
"Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning")

One learned vector per site, initialised to ones (the adapted model starts equal to the base model): over the output
features at ordinary sites, over the input features at feed-forward sites. Merging scales W's rows (and b), or W's
columns at feed-forward sites; unmerging divides them again (a site whose vector holds an exact zero keeps a copy of
its weights instead, as that scaling cannot be undone).
Sites: nn.Linear, transformers' GPT-2 `Conv1D` (weights stored (d_in, d_out): fan_in_fan_out) and nn.Conv1d/2d/3d
with groups == 1 (channels as features). Tensors and adapter_config.json follow Hugging Face PEFT's IA3 exactly: one
tensor `ia3_l` per site, shaped (d_out, 1), (1, d_in) for feed-forward sites, or (1, C, 1[, 1[, 1]]) for convolutions.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.core import routing
from peftlab.core.config import MethodConfig, TargetSpec, check, normalise_targets
from peftlab.core.layer import BaseCall
from peftlab.core.sites import SiteRole, WeightDeltaSite
from peftlab.core.targets import linear_types, select_modules, stores_weight_transposed
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.core.view import AdapterView
from peftlab.errors import TargetError
from peftlab.io.formats import FileFormat

# Hugging Face PEFT's default (targets, feed-forward targets) per transformers model_type (peft/utils/constants.py).
# GPT-Neo's feed-forward "c_proj" is written "mlp.c_proj" (the same modules) so that the union below stays unambiguous.
DEFAULT_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "roberta": (("key", "value", "output.dense"), ("output.dense",)),
    "deberta-v2": (("key_proj", "value_proj", "output.dense"), ("output.dense",)),
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mistral": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen3": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "phi": (("q_proj", "v_proj", "fc2"), ("fc2",)),
    "opt": (("q_proj", "k_proj", "fc2"), ("fc2",)),
    "bart": (("q_proj", "v_proj", "fc2"), ("fc2",)),
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
    "gpt_bigcode": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
    "gpt_neo": (("q_proj", "v_proj", "mlp.c_proj"), ("mlp.c_proj",)),
    "gpt_neox": (("query_key_value", "dense_4h_to_h"), ("dense_4h_to_h",)),
    "gptj": (("q_proj", "v_proj", "fc_out"), ("fc_out",)),
    "falcon": (("query_key_value", "dense_4h_to_h"), ("dense_4h_to_h",)),
    "bloom": (("query_key_value", "mlp.dense_4h_to_h"), ("mlp.dense_4h_to_h",)),
    "t5": (("k", "v", "wo"), ("wo",)),
}
# feedforward=None: a site is feed-forward when its name ends with one of these (every architecture's list above).
FEEDFORWARD_NAMES: tuple[str, ...] = tuple(dict.fromkeys(n for _, ff in DEFAULT_TARGETS.values() for n in ff))


def is_feedforward(path: str, spec: TargetSpec) -> bool:
    """Hugging Face PEFT's rule: a regex string must match the whole name; a list entry is a plain name suffix."""
    if isinstance(spec, str):
        return re.fullmatch(spec, path) is not None
    return any(path.endswith(key) for key in spec or ())


@dataclasses.dataclass(frozen=True, kw_only=True)
class IA3(MethodConfig):
    """(IA)³ hyperparameters; the fields of Hugging Face PEFT's IA3Config.

    targets: None picks Hugging Face PEFT's defaults for the model's architecture (BERT: key, value, output.dense;
        Llama: k_proj, v_proj, down_proj; GPT-2: c_attn, mlp.c_proj; see DEFAULT_TARGETS); other models need a list.
    feedforward: which targeted modules scale their input instead of their output. A regex (full match) or names
        matched as plain suffixes, as Hugging Face PEFT does; with a list of `targets` it must be a subset of it.
        None: names ending with one of FEEDFORWARD_NAMES (down_proj, fc2, mlp.c_proj, output.dense, ...).
    fan_in_fan_out: kept for Hugging Face PEFT files; the layout is detected from the module type.
    """

    card: ClassVar[MethodCard] = MethodCard(
        id="ia3", name="(IA)³", kind=AttachKind.WEIGHT_DELTA, inserted_at="attention keys/values, feed-forward",
        form="vector", integration="multiplication", param_formula="d_out (d_in at feed-forward sites)",
        mergeable=True, paper="Liu et al. 2022")
    study_lr: ClassVar[float] = 3e-2

    feedforward: TargetSpec = None
    fan_in_fan_out: bool | None = None

    def validate(self) -> None:
        self._set("feedforward", normalise_targets(self.feedforward, "feedforward"))
        if isinstance(self.feedforward, tuple) and isinstance(self.targets, tuple):
            extra = sorted(set(self.feedforward) - set(self.targets))
            check(not extra, "feedforward", f"{extra} are not in targets {list(self.targets)}; feed-forward modules "
                  "must be a subset of the targets (as in Hugging Face PEFT)")

    def supports(self, module: nn.Module) -> bool:
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.groups == 1 and not isinstance(module, nn.modules.conv._ConvTransposeNd)
        return isinstance(module, linear_types())

    def select_sites(self, model: nn.Module) -> dict[str, nn.Module]:
        if self.targets is not None:
            return super().select_sites(model)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise TargetError(f"ia3 has no default targets for {type(model).__name__} (model_type {model_type!r}); "
                              "pass targets=[...] (and feedforward=[...]), e.g. IA3(targets=['k_proj', 'v_proj', "
                              f"'down_proj'], feedforward=['down_proj']). Known model types: {sorted(DEFAULT_TARGETS)}")
        return select_modules(model, dataclasses.replace(self, targets=DEFAULT_TARGETS[model_type][0]))

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> nn.Module:
        spec = self.feedforward if self.feedforward is not None else FEEDFORWARD_NAMES
        return IA3Site(module, is_feedforward(path, spec))


class IA3Site(WeightDeltaSite):
    """The vector `ia3_l` at one site, in Hugging Face PEFT's shape; it scales the output, or the input at a
    feed-forward site."""

    def __init__(self, module: nn.Module, feedforward: bool) -> None:
        super().__init__()
        weight = module.weight
        conv = isinstance(module, nn.modules.conv._ConvNd)
        # Axes of the weight holding (d_out, d_in): Linear and Conv store (d_out, d_in, ...), GPT-2's Conv1D
        # (d_in, d_out).
        out_axis, in_axis = (1, 0) if stores_weight_transposed(module) else (0, 1)
        self.weight_axis = in_axis if feedforward else out_axis
        size = weight.shape[self.weight_axis]
        if conv:
            shape: tuple[int, ...] = (1, size) + (1,) * (weight.dim() - 2)
        else:
            shape = (1, size) if feedforward else (size, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape, dtype=weight.dtype if weight.is_floating_point() else None))
        self.feedforward = feedforward
        self.channel_dim = 1 if conv else -1  # where the features sit in the activations
        self._saved: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def _scale_for(self, t: torch.Tensor) -> torch.Tensor:
        """The vector shaped to broadcast over activations `t` along their feature dimension."""
        vector = self.ia3_l.flatten()  # (n,)
        if self.channel_dim == 1:
            return vector.view(-1, *([1] * (t.dim() - 2)))  # (C,) -> (C, 1[, 1]) against (B, C, ...)
        return vector

    def forward(self, x: torch.Tensor, base: BaseCall) -> torch.Tensor:
        if self.feedforward:
            scaled = x.to(self.ia3_l.dtype) * self._scale_for(x)
            return base(scaled.to(x.dtype))
        result = base(x)
        return (result.to(self.ia3_l.dtype) * self._scale_for(result)).to(result.dtype)

    routable = True
    effect_parameters: ClassVar[dict[str, float]] = {"ia3_l": 1.0}  # the composition paper's negation: l -> 2 - l

    @classmethod
    def route(cls, sites: list[IA3Site | None], index: torch.Tensor, x: torch.Tensor, base: BaseCall,
              cache: routing.StackCache) -> torch.Tensor:
        """Each sample's (or token's) own vector: the input scaled by the feed-forward sites' vectors, the output
        by the others' (ones elsewhere)."""
        inputs, outputs = cache.get(sites, lambda: (
            routing.stack([s.ia3_l.flatten() if s is not None and s.feedforward else None for s in sites], 1.0)
            if any(s is not None and s.feedforward for s in sites) else None,
            routing.stack([s.ia3_l.flatten() if s is not None and not s.feedforward else None for s in sites], 1.0)
            if any(s is not None and not s.feedforward for s in sites) else None))
        dim = next(s for s in sites if s is not None).channel_dim
        if inputs is not None:
            x = (x.to(inputs.dtype) * routing.pick(inputs, index, x, dim)).to(x.dtype)
        result = base(x)
        if outputs is None:
            return result
        return (result.to(outputs.dtype) * routing.pick(outputs, index, result, dim)).to(result.dtype)

    def _weight_scale(self, weight: torch.Tensor) -> torch.Tensor:
        shape = [1] * weight.dim()
        shape[self.weight_axis] = -1
        return self.ia3_l.flatten().view(shape).to(weight.dtype)  # (n,) -> broadcast over the weight's rows/columns

    def merge(self, module: nn.Module) -> None:
        bias = getattr(module, "bias", None)
        scale_bias = not self.feedforward and bias is not None
        if (self.ia3_l == 0).any():  # dividing by zero cannot unmerge: keep the originals
            self._saved = (module.weight.detach().clone(), bias.detach().clone() if scale_bias else None)
        module.weight.mul_(self._weight_scale(module.weight))
        if scale_bias:
            bias.mul_(self.ia3_l.flatten().to(bias.dtype))

    def unmerge(self, module: nn.Module) -> None:
        bias = getattr(module, "bias", None)
        scale_bias = not self.feedforward and bias is not None
        if self._saved is not None:
            module.weight.copy_(self._saved[0])
            if scale_bias:
                bias.copy_(self._saved[1])
            self._saved = None
            return
        module.weight.div_(self._weight_scale(module.weight))
        if scale_bias:
            bias.div_(self.ia3_l.flatten().to(bias.dtype))


class IA3Format(FileFormat):
    """Hugging Face PEFT's IA3Config, with the resolved sites, so both libraries pick the same modules."""

    peft_type = "IA3"

    def to_file(self, adapter: AdapterView) -> dict[str, Any]:
        config: IA3 = adapter.config
        sites = adapter.paths(SiteRole.METHOD)
        spec = config.feedforward if config.feedforward is not None else FEEDFORWARD_NAMES
        transposed = any(stores_weight_transposed(e.module) for e in adapter.entries(SiteRole.METHOD))
        return {
            "peft_type": "IA3", "task_type": None, "target_modules": sites,
            "feedforward_modules": [p for p in sites if is_feedforward(p, spec)],
            "fan_in_fan_out": bool(config.fan_in_fan_out) or transposed,
            "modules_to_save": adapter.paths(SiteRole.SAVED) or None, "exclude_modules": None,
            "init_ia3_weights": True, "inference_mode": True,
        }

    def from_file(self, data: Mapping[str, Any]) -> IA3:
        def spec(key: str) -> TargetSpec:
            value = data.get(key)
            return value if value is None or isinstance(value, str) else tuple(value)

        # null target_modules / feedforward_modules: the architecture's defaults, as Hugging Face PEFT reads them
        return IA3(targets=spec("target_modules"), feedforward=spec("feedforward_modules"),
                   exclude=spec("exclude_modules"), fan_in_fan_out=bool(data.get("fan_in_fan_out")) or None,
                   modules_to_save=tuple(data.get("modules_to_save") or ()))


IA3.site_types = (IA3Site,)
IA3.file_format = IA3Format(IA3)
