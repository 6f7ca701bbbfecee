"""Prefix tuning: attention over [P_K^ℓ; K^ℓ] and [P_V^ℓ; V^ℓ] in every layer ℓ, P^ℓ ∈ R^{n×d_kv} trainable
(Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation")

The prefixes enter through the model's key/value cache: the call that starts a sequence gets a transformers
DynamicCache (or the empty one it was given, as generate() does) that already holds n key and n value vectors per
layer; the attention mask gets n ones in front and position_ids move by n, as the model itself counts positions after
a cache of n. Calls continuing a cache that holds the prefix (generate's later steps) get the longer mask and
positions only. All prefixes are one tensor, prompt_embeddings (n, L·2·d_kv), laid out as in Hugging Face PEFT:
per layer, keys then values, each (heads, head size) flattened; d_kv = key/value heads × head size.
reparameterize=True trains P = MLP(E) instead (E ∈ R^{n×d_kv}, MLP d_kv → hidden → L·2·d_kv with tanh, Hugging Face
PEFT's prefix_projection): files hold the projected prefixes, as Hugging Face PEFT's do, so an adapter read from a
file keeps training the prefixes directly. Files: Hugging Face PEFT's PREFIX_TUNING layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.core.config import MethodConfig, check
from peftlab.core.context import CallContext
from peftlab.core.model_inputs import (
    CACHE_ARGUMENTS,
    batch_and_length,
    bind_arguments,
    cache_argument,
    continues_cache,
    find_cache,
    text_config,
)
from peftlab.core.routing import Routing
from peftlab.core.sites import ModelAdapter
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.core.view import AdapterView
from peftlab.errors import AdapterStateError
from peftlab.methods.prompt import (
    PromptLearningFormat,
    check_input_side,
    hf_prompt_learning_fields,
    input_embeddings,
    prompt_learning_fields_from_file,
    shift_cached_prompts,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrefixTuning(MethodConfig):
    """Prefix tuning hyperparameters.

    num_virtual_tokens: n, the prefix length (>= 1). reparameterize: train the prefixes through an MLP (files still
    hold the prefixes themselves). hidden: that MLP's hidden size (None: d_kv; only with reparameterize).
    targets, target_types, layers and exclude do not apply: every attention layer gets a prefix.
    """

    card: ClassVar[MethodCard] = MethodCard(
        id="prefix", name="Prefix tuning", kind=AttachKind.INPUT_SIDE, inserted_at="attention (keys and values)",
        form="prompt matrix per layer", integration="concatenation", param_formula="n·2·L·d_kv",
        mergeable=False, paper="Li & Liang 2021",
        symbols="n: virtual tokens, L: layers, d_kv: key/value width (heads × head size); with reparameterize, while "
                "training: n·d_kv + (d_kv + 1)·h + (h + 1)·2·L·d_kv")
    study_lr: ClassVar[float] = 3e-2
    size_fields: ClassVar[tuple[str, ...]] = ("num_virtual_tokens", "hidden")

    num_virtual_tokens: int = 20
    reparameterize: bool = False
    hidden: int | None = None

    def validate(self) -> None:
        check_input_side(self)
        check(isinstance(self.reparameterize, bool), "reparameterize", f"must be true or false, got "
              f"{self.reparameterize!r}")
        if self.hidden is not None:
            check(isinstance(self.hidden, int) and self.hidden >= 1, "hidden", f"must be an integer >= 1, got "
                  f"{self.hidden!r}")
            check(self.reparameterize, "hidden", "is the reparameterisation MLP's size; set reparameterize=True too")

    def supports(self, module: nn.Module) -> bool:
        return False  # no per-module sites: the prefixes enter through the cache

    def select_sites(self, model: nn.Module) -> dict[str, nn.Module]:
        return {}

    def build_model_adapter(self, model: nn.Module, sites: dict[str, nn.Module]) -> nn.Module:
        embedding = input_embeddings(model, self)
        adapter = PrefixAdapter(model, self.num_virtual_tokens, self.reparameterize, self.hidden)
        return adapter.to(device=embedding.weight.device)


def hide_cache(output: Any, call: CallContext) -> Any:
    """With use_cache=False the caller gets no cache back, though the prefixes travelled in one: otherwise
    generate(use_cache=False) would pass it on, and the next call would read as a continuation."""
    if call.scratch(PrefixAdapter).get("hide_cache") and isinstance(output, Mapping):
        for name in CACHE_ARGUMENTS:
            if output.get(name) is not None:
                output[name] = None
    return output


def kv_geometry(model: nn.Module) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a transformers model; grouped-query attention has fewer kv heads."""
    config = text_config(model)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


class PrefixAdapter(ModelAdapter):
    """The prefixes (state: prompt_embeddings (n, L·2·d_kv)) and the rewriting of each model call around them."""

    def __init__(self, model: nn.Module, n: int, reparameterize: bool, hidden: int | None) -> None:
        super().__init__()
        self.layers, self.kv_heads, self.head_dim = kv_geometry(model)
        self.n = n
        d_kv = self.kv_heads * self.head_dim
        width = self.layers * 2 * d_kv
        self.hidden = hidden or d_kv
        if reparameterize:
            self.embedding = nn.Parameter(torch.randn(n, d_kv))
            self.transform = nn.Sequential(nn.Linear(d_kv, self.hidden), nn.Tanh(), nn.Linear(self.hidden, width))
        else:
            self.prompt_embeddings = nn.Parameter(torch.randn(n, width))  # N(0, 1), as Hugging Face PEFT
        object.__setattr__(self, "_model", model)  # a plain reference: not a submodule, not in the state

    @property
    def reparameterized(self) -> bool:
        return "transform" in self._modules

    def prefixes(self) -> torch.Tensor:
        """All prefixes, (n, L·2·d_kv)."""
        return self.transform(self.embedding) if self.reparameterized else self.prompt_embeddings

    def prepare(self, args: tuple, kwargs: dict[str, Any], call: CallContext) -> tuple[tuple, dict[str, Any]]:
        kw = bind_arguments(self._model, args, kwargs)
        batch, _ = batch_and_length(kw)
        lengths = torch.full((batch,), self.n, dtype=torch.long)
        return (), self._with_prefixes(kw, lambda: self.kv().unsqueeze(0).expand(batch, -1, -1, -1, -1), lengths, call)

    def finish(self, output: Any, call: CallContext) -> Any:
        return hide_cache(output, call)

    def kv(self) -> torch.Tensor:
        """The prefixes as keys and values per layer, (2L, H, n, D), in the model's dtype."""
        dtype = getattr(self._model, "dtype", None) or self.prefixes().dtype
        kv = self.prefixes().to(dtype).view(self.n, self.layers * 2, self.kv_heads, self.head_dim)  # (n, 2L, H, D)
        return kv.permute(1, 2, 0, 3)  # (n, 2L, H, D) -> (2L, H, n, D)

    def _with_prefixes(self, kw: dict[str, Any], rows: Callable[[], torch.Tensor], lengths: torch.Tensor,
                       call: CallContext) -> dict[str, Any]:
        """The call's arguments with per-sample prefixes (`rows()`: (B, 2L, H, n_max, D), sample i's first
        `lengths[i]` positions real) written into its cache when it starts a sequence; masks and positions as for
        per-sample prompts (methods/prompt.py, prepend_prompts)."""
        model = self._model
        if not continues_cache(kw, call):  # a new sequence: put the prefixes into the cache
            if model.training and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
                raise AdapterStateError("prefix tuning passes the prefixes through the cache, which transformers "
                                        "drops under gradient (activation) checkpointing; turn it off, e.g. "
                                        "model.activation_checkpointing_disable()")
            cache = find_cache(kw)
            # the caller asked for no cache: finish() hands back none
            call.scratch(PrefixAdapter)["hide_cache"] = cache is None and kw.get("use_cache") is False
            if cache is None:
                from transformers import DynamicCache

                cache = DynamicCache(config=text_config(model))
                for name in CACHE_ARGUMENTS:  # an explicit None under either name goes: one name is passed
                    kw.pop(name, None)
                kw[cache_argument(type(model))] = cache
            kv = rows()  # (B, 2L, H, n_max, D)
            for layer in range(self.layers):
                cache.update(kv[:, 2 * layer], kv[:, 2 * layer + 1], layer)  # keys, values: (B, H, n_max, D)
            call.note_virtual_tokens(cache, kv.shape[3])
        n_max = int(lengths.max()) if lengths.numel() else self.n
        return shift_cached_prompts(kw, lengths, n_max, bool((lengths == n_max).all()), model, right_aligned=False)

    routable = True

    @classmethod
    def route_prepare(cls, adapters: list[PrefixAdapter | None], routing: Routing, args: tuple,
                      kwargs: dict[str, Any], call: CallContext) -> tuple[tuple, dict[str, Any]]:
        """Each sample's own prefixes (none for the base), in front of masked key/value slots."""
        live = [a for a in adapters if a is not None]
        first = live[0]
        if any((a.layers, a.kv_heads, a.head_dim) != (first.layers, first.kv_heads, first.head_dim) for a in live):
            raise AdapterStateError("the routed prefix adapters were made for models of different shapes")
        kw = bind_arguments(first._model, args, kwargs)
        index = routing.index
        lengths = torch.tensor([a.n if a is not None else 0 for a in adapters] + [0])[index.cpu()]

        def rows() -> torch.Tensor:
            per_adapter = [a.kv() if a is not None else None for a in adapters]  # (2L, H, n_i, D) each
            n_max = max(kv.shape[2] for kv in per_adapter if kv is not None)
            stacked = first.kv().new_zeros(len(adapters) + 1, 2 * first.layers, first.kv_heads, n_max, first.head_dim)
            for i, kv in enumerate(per_adapter):
                if kv is not None:
                    stacked[i, :, :, : kv.shape[2]] = kv  # the first n_i slots
            return stacked[index.to(stacked.device)]  # (B, 2L, H, n_max, D)

        return (), first._with_prefixes(kw, rows, lengths, call)

    @classmethod
    def route_finish(cls, adapters: list[PrefixAdapter | None], output: Any, call: CallContext) -> Any:
        return hide_cache(output, call)

    def export_state(self, base_model: nn.Module) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.prefixes().detach()}

    def import_state(self, state: dict[str, torch.Tensor], base_model: nn.Module) -> None:
        value = state["prompt_embeddings"]
        if self.reparameterized:  # the file holds projected prefixes: train those from now on
            trainable = self.embedding.requires_grad
            del self.embedding, self.transform
            self.prompt_embeddings = nn.Parameter(value.detach().clone(), requires_grad=trainable)
        else:
            with torch.no_grad():
                self.prompt_embeddings.copy_(value)


class PrefixTuningFormat(PromptLearningFormat):
    """Hugging Face PEFT's PrefixTuningConfig. It describes the prefix by its key/value width (kv heads × head
    size), not the hidden size."""

    peft_type = "PREFIX_TUNING"

    def to_file(self, adapter: AdapterView) -> dict[str, Any]:
        config: PrefixTuning = adapter.config
        prefix: PrefixAdapter = adapter.model_adapter
        return {**hf_prompt_learning_fields(adapter), "peft_type": "PREFIX_TUNING",
                "prefix_projection": config.reparameterize, "init_weights": None,
                "token_dim": prefix.kv_heads * prefix.head_dim, "num_attention_heads": prefix.kv_heads,
                "encoder_hidden_size": prefix.hidden}

    def from_file(self, data: Mapping[str, Any]) -> PrefixTuning:
        projected = bool(data.get("prefix_projection"))
        hidden = data.get("encoder_hidden_size") if projected else None
        return PrefixTuning(reparameterize=projected, hidden=hidden, **prompt_learning_fields_from_file(data))


PrefixTuning.model_adapter_type = PrefixAdapter
PrefixTuning.file_format = PrefixTuningFormat(PrefixTuning)
