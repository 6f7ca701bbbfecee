"""Reading and rewriting one call of a transformers-style model, for model-level adapters (core.layer.ModelAdapter).

A model-level adapter sees the arguments of every call of the base model: input_ids or inputs_embeds (B, T[, d]),
attention_mask (B, T_past + T), position_ids, token_type_ids, labels, and the key/value cache, which transformers
5.24 renamed from `past_key_values` to `cache` (`find_cache`, `cache_argument`). Input-side methods share three
questions, answered here once:

- which argument is which, when some were passed by position (`bind_arguments`);
- does this call start a sequence, or continue a cache that already holds the sequence's start, virtual tokens
  included (`continues_cache`)? As in Hugging Face PEFT, a non-empty cache passed in is taken to come from earlier
  calls with the same adapters active. Key/value prefixes are written into the cache before the model runs; the
  call's context counts them (`CallContext.note_virtual_tokens`) so that they do not make the call look like a
  continuation;
- making room for n virtual tokens in front: masks get n ones (`prepend_ones`), positions move by n.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from peftlab.core.context import CallContext
from peftlab.errors import AdapterStateError, TargetError

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@functools.cache
def _positional_names(model_cls: type) -> tuple[str, ...]:
    params = list(inspect.signature(model_cls.forward).parameters.values())[1:]  # without self
    return tuple(p.name for p in params if p.kind in _POSITIONAL)


def bind_arguments(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (positional ones bound through the signature of `model.forward`)."""
    if not args:
        return dict(kwargs)
    names = _positional_names(type(model))
    if len(args) > len(names):
        raise AdapterStateError(f"{type(model).__name__} was called with {len(args)} positional arguments, but its "
                                f"forward names only {len(names)}; pass the inputs by keyword (input_ids=...)")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def batch_shape(args: tuple, kwargs: dict[str, Any]) -> tuple[int, ...]:
    """(batch,) or (batch, tokens) of a call: from input_ids or inputs_embeds, else the first tensor argument (its
    first dimension); () when the call has no tensor."""
    for name in ("input_ids", "inputs_embeds"):
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor):
            return tuple(value.shape[:2])
    first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
    if first is None:
        return ()
    return tuple(first.shape[:2]) if first.dim() >= 2 and not first.is_floating_point() else tuple(first.shape[:1])


def batch_and_length(kwargs: dict[str, Any]) -> tuple[int, int]:
    """(batch size, number of new tokens) of a call, from input_ids or inputs_embeds."""
    tokens = kwargs.get("input_ids")
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    if tokens is None:
        raise AdapterStateError("this adapter needs the model to be called with input_ids or inputs_embeds")
    return tokens.shape[0], tokens.shape[1]


def _cache_length(cache: Any) -> int:
    if isinstance(cache, (tuple, list)):
        raise AdapterStateError("the key/value cache is a legacy tuple; pass a transformers Cache (e.g. DynamicCache)")
    return int(cache.get_seq_length())


CACHE_ARGUMENTS = ("cache", "past_key_values")  # transformers >= 5.24, then the name before it


def find_cache(kwargs: dict[str, Any]) -> Any:
    """The key/value cache passed to a call, under either name (None when there is none)."""
    return next((kwargs[name] for name in CACHE_ARGUMENTS if kwargs.get(name) is not None), None)


@functools.cache
def cache_argument(model_cls: type) -> str:
    """The name under which `model_cls.forward` takes the key/value cache."""
    parameters = inspect.signature(model_cls.forward).parameters
    return next((name for name in CACHE_ARGUMENTS if name in parameters), "past_key_values")


def continues_cache(kwargs: dict[str, Any], call: CallContext) -> bool:
    """True when the call continues a cache holding earlier tokens (not just key/value prefixes this call wrote)."""
    cache = find_cache(kwargs)
    return cache is not None and _cache_length(cache) > call.virtual_in(cache)


def prepend_ones(mask: torch.Tensor | None, n: int, name: str = "attention_mask") -> torch.Tensor | None:
    """A 2-D (B, L) mask with n ones in front: (B, n + L). None stays None (the model then attends everywhere)."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise AdapterStateError(f"{name} has shape {tuple(mask.shape)}; virtual tokens need a 2-D (batch, length) "
                                "mask of ones and zeros")
    return torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)  # (B, L) -> (B, n + L)


def hf_task_type(model: nn.Module) -> str | None:
    """The Hugging Face PEFT task_type of a transformers model, from its class name (None when unknown)."""
    name = type(model).__name__
    for suffix, task in (("ForCausalLM", "CAUSAL_LM"), ("LMHeadModel", "CAUSAL_LM"),
                         ("ForSequenceClassification", "SEQ_CLS"), ("ForTokenClassification", "TOKEN_CLS"),
                         ("ForQuestionAnswering", "QUESTION_ANS"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
                         ("ForSeq2SeqLM", "SEQ_2_SEQ_LM")):
        if name.endswith(suffix):
            return task
    return "FEATURE_EXTRACTION" if name.endswith("Model") else None


def text_config(model: nn.Module) -> Any:
    """The model's (text) config; AdapterStateError when the model has none (a plain PyTorch module)."""
    config = getattr(model, "config", None)
    if config is None:
        raise TargetError(f"{type(model).__name__} has no transformers config; this method needs a "
                                "transformers model with token inputs")
    return config.get_text_config() if hasattr(config, "get_text_config") else config
