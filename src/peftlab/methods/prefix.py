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
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.core.config import MethodConfig, check
from peftlab.core.model_inputs import (
    CACHE_ARGUMENTS,
    batch_and_length,
    bind_arguments,
    cache_argument,
    continues_cache,
    find_cache,
    note_virtual_tokens,
    text_config,
)
from peftlab.core.registry import register
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.errors import AdapterStateError
from peftlab.methods.prompt import (
    check_input_side,
    hf_model_fields,
    hf_prompt_learning_fields,
    input_embeddings,
    prompt_learning_fields_from_file,
    shift_for_cached_virtual,
)


@register
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
    file_prefix: ClassVar[str] = "base_model."
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

    def build_model_adapter(self, model: nn.Module) -> nn.Module:
        embedding = input_embeddings(model, self)
        adapter = PrefixAdapter(model, self.num_virtual_tokens, self.reparameterize, self.hidden)
        return adapter.to(device=embedding.weight.device)

    @classmethod
    def file_type(cls) -> str:
        return "PREFIX_TUNING"

    def to_file_config(self, sites: list[str], saved: list[str]) -> dict[str, Any]:
        return {**hf_prompt_learning_fields(self.num_virtual_tokens, saved), "peft_type": "PREFIX_TUNING",
                "prefix_projection": self.reparameterize, "encoder_hidden_size": self.hidden, "init_weights": None}

    @classmethod
    def from_file_config(cls, data: Mapping[str, Any]) -> PrefixTuning:
        projected = bool(data.get("prefix_projection"))
        hidden = data.get("encoder_hidden_size") if projected else None
        return cls(reparameterize=projected, hidden=hidden, **prompt_learning_fields_from_file(data))


def kv_geometry(model: nn.Module) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a transformers model; grouped-query attention has fewer kv heads."""
    config = text_config(model)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


class PrefixAdapter(nn.Module):
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
        self._hide_cache = False  # this call's caller asked for no cache (use_cache=False)

    @property
    def reparameterized(self) -> bool:
        return "transform" in self._modules

    def prefixes(self) -> torch.Tensor:
        """All prefixes, (n, L·2·d_kv)."""
        return self.transform(self.embedding) if self.reparameterized else self.prompt_embeddings

    def prepare(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        kw = bind_arguments(self._model, args, kwargs)
        if not continues_cache(kw):  # a new sequence: put the prefixes into the cache
            model = self._model
            if model.training and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
                raise AdapterStateError("prefix tuning passes the prefixes through the cache, which transformers "
                                        "drops under gradient (activation) checkpointing; turn it off, e.g. "
                                        "model.activation_checkpointing_disable()")
            batch, _ = batch_and_length(kw)
            cache = find_cache(kw)
            self._hide_cache = cache is None and kw.get("use_cache") is False
            if cache is None:
                from transformers import DynamicCache

                cache = DynamicCache(config=text_config(model))
                for name in CACHE_ARGUMENTS:  # an explicit None under either name goes: one name is passed
                    kw.pop(name, None)
                kw[cache_argument(type(model))] = cache
            self._write(cache, batch)
            note_virtual_tokens(cache, self.n)
        return (), shift_for_cached_virtual(kw, self.n)

    def finish(self, output: Any) -> Any:
        """With use_cache=False the caller gets no cache back, though the prefixes travelled in one: otherwise
        generate(use_cache=False) would pass it on, and the next call would read as a continuation."""
        if self._hide_cache and isinstance(output, Mapping):
            for name in CACHE_ARGUMENTS:
                if output.get(name) is not None:
                    output[name] = None
        return output

    def _write(self, cache: Any, batch: int) -> None:
        dtype = getattr(self._model, "dtype", None) or self.prefixes().dtype
        flat = self.prefixes().to(dtype)
        kv = flat.view(self.n, self.layers * 2, self.kv_heads, self.head_dim)  # (n, L·2·d_kv) -> (n, 2L, H, D)
        kv = kv.permute(1, 2, 0, 3)  # (n, 2L, H, D) -> (2L, H, n, D)
        for layer in range(self.layers):
            key = kv[2 * layer].unsqueeze(0).expand(batch, -1, -1, -1)  # (H, n, D) -> (B, H, n, D)
            value = kv[2 * layer + 1].unsqueeze(0).expand(batch, -1, -1, -1)  # (H, n, D) -> (B, H, n, D)
            cache.update(key, value, layer)

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

    def file_config(self) -> dict[str, Any]:
        # Hugging Face PEFT describes the prefix by its key/value width (kv heads × head size), not the hidden size.
        return {**hf_model_fields(self._model), "token_dim": self.kv_heads * self.head_dim,
                "num_attention_heads": self.kv_heads, "encoder_hidden_size": self.hidden}
