"""Prompt tuning: h⁰ = [P; E(x)], P ∈ R^{n×d} trainable   (Lester et al., 2021, "The Power of Scale for
Parameter-Efficient Prompt Tuning")

n virtual-token embeddings go in front of the input embeddings E(x). The model-level adapter turns input_ids into
inputs_embeds (B, n + T, d) and makes room for the prompt in the other per-token arguments: the attention mask gets n
ones, token_type_ids n zeros, per-token labels n × -100, position_ids the positions 0..n-1 and then their own shifted
by n (what the model uses when given none). Per-token outputs (logits, hidden states) come back without the n virtual
positions, so they line up with the input tokens as for the base model. Hugging Face PEFT returns them with the
virtual positions; the loss is the same (the model's own, over the extended labels). With a cache (generate), only
the call that starts a sequence gets the prompt; calls continuing the cache get the longer mask and positions.
Init "random" is N(0, 1) as in Hugging Face PEFT; "vocab" copies the embeddings of random vocabulary tokens; "text"
those of `init_text`'s tokens (repeated or cut to n). Files: Hugging Face PEFT's PROMPT_TUNING layout.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.core import attach
from peftlab.core.config import MethodConfig, check
from peftlab.core.context import CallContext
from peftlab.core.model_inputs import (
    batch_and_length,
    bind_arguments,
    continues_cache,
    find_cache,
    hf_task_type,
    prepend_ones,
    text_config,
)
from peftlab.core.routing import Routing
from peftlab.core.sites import ModelAdapter, SiteRole
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.core.view import AdapterView
from peftlab.errors import AdapterLoadError, AdapterStateError, ConfigError, TargetError
from peftlab.io.formats import FileFormat

INITS = ("random", "vocab", "text")
_HF_INITS = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB", "text": "TEXT"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptTuning(MethodConfig):
    """Prompt tuning hyperparameters.

    num_virtual_tokens: n, the prompt length (>= 1). init: "random", "vocab" or "text" (then init_text and
    tokenizer_path, the folder or hub id of the model's tokenizer, are required). modules_to_save as for every method
    (a classification model's new head is trained by default); targets, target_types, layers and exclude do not apply.
    """

    card: ClassVar[MethodCard] = MethodCard(
        id="prompt", name="Prompt tuning", kind=AttachKind.INPUT_SIDE, inserted_at="embeddings (input sequence)",
        form="prompt matrix", integration="concatenation", param_formula="n·d", mergeable=False,
        paper="Lester et al. 2021", symbols="n: virtual tokens, d: the embedding size")
    study_lr: ClassVar[float] = 3e-2
    size_fields: ClassVar[tuple[str, ...]] = ("num_virtual_tokens",)

    num_virtual_tokens: int = 20
    init: str = "random"
    init_text: str | None = None
    tokenizer_path: str | None = None

    def validate(self) -> None:
        check_input_side(self)
        if isinstance(self.tokenizer_path, os.PathLike):
            self._set("tokenizer_path", os.fspath(self.tokenizer_path))
        check(self.init in INITS, "init", f"must be one of {INITS}, got {self.init!r}")
        if self.init == "text":
            check(isinstance(self.init_text, str) and bool(self.init_text.strip()), "init_text",
                  "init='text' needs the text whose token embeddings start the prompt")
            check(isinstance(self.tokenizer_path, str) and bool(self.tokenizer_path), "tokenizer_path",
                  "init='text' needs the tokenizer of the base model (a folder or hub id)")
        else:
            check(self.init_text is None, "init_text", f"is used only with init='text' (init is {self.init!r})")

    def supports(self, module: nn.Module) -> bool:
        return False  # no per-module sites: everything happens at the model's input

    def select_sites(self, model: nn.Module) -> dict[str, nn.Module]:
        return {}

    def build_model_adapter(self, model: nn.Module, sites: dict[str, nn.Module]) -> nn.Module:
        embedding = input_embeddings(model, self)
        adapter = PromptAdapter(model, self.initial_prompt(model, embedding))
        return attach.place_like(adapter, embedding)

    def initial_prompt(self, model: nn.Module, embedding: nn.Module) -> torch.Tensor:
        """The starting prompt (n, d) in float32."""
        n, (vocab, dim) = self.num_virtual_tokens, embedding.weight.shape
        if self.init == "random":
            return torch.randn(n, dim)
        if self.init == "vocab":
            ids = torch.randint(0, vocab, (n,))
        else:
            ids = self._text_ids(vocab)
        with torch.no_grad():
            return embedding(ids.to(embedding.weight.device)).detach().float().cpu().clone()  # (n, d)

    def _text_ids(self, vocab: int) -> torch.Tensor:
        from transformers import AutoTokenizer

        ids = list(AutoTokenizer.from_pretrained(self.tokenizer_path)(self.init_text)["input_ids"])
        if not ids or max(ids) >= vocab:
            raise ConfigError(f"tokenizer_path={self.tokenizer_path!r} gives token ids up to {max(ids, default=0)}, "
                              f"but the model has {vocab} embeddings; use the base model's own tokenizer")
        repeats = -(-self.num_virtual_tokens // len(ids))  # ceil: repeat the text until it covers n tokens
        return torch.tensor((ids * repeats)[: self.num_virtual_tokens])



class PromptAdapter(ModelAdapter):
    """The prompt (state: prompt_embeddings (n, d)) and the rewriting of each model call around it."""

    def __init__(self, model: nn.Module, prompt: torch.Tensor) -> None:
        super().__init__()
        self.prompt_embeddings = nn.Parameter(prompt)
        object.__setattr__(self, "_model", model)  # a plain reference: not a submodule, not in the state

    def prepare(self, args: tuple, kwargs: dict[str, Any], call: CallContext) -> tuple[tuple, dict[str, Any]]:
        kw = bind_arguments(self._model, args, kwargs)
        batch, _ = batch_and_length(kw)
        prompt = self.prompt_embeddings.unsqueeze(0).expand(batch, -1, -1)  # (n, d) -> (B, n, d)
        lengths = torch.full((batch,), prompt.shape[1], dtype=torch.long)
        return (), prepend_prompts(self._model, kw, prompt, lengths, call, PromptAdapter)

    def finish(self, output: Any, call: CallContext) -> Any:
        return keep_call_positions(output, call, PromptAdapter)

    routable = True

    @classmethod
    def route_prepare(cls, adapters: list[PromptAdapter | None], routing: Routing, args: tuple,
                      kwargs: dict[str, Any], call: CallContext) -> tuple[tuple, dict[str, Any]]:
        """Each sample's own prompt (none for the base): prompts of different lengths are padded behind (masked),
        and positions are given explicitly, so each sample sees what it would see alone."""
        live = [a for a in adapters if a is not None]
        kw = bind_arguments(live[0]._model, args, kwargs)
        prompts = routing_stack_prompts([a.prompt_embeddings if a is not None else None for a in adapters])
        index = routing.index.to(prompts.device)
        lengths = torch.tensor([a.prompt_embeddings.shape[0] if a is not None else 0 for a in adapters] + [0],
                               device=prompts.device)[index]
        return (), prepend_prompts(live[0]._model, kw, prompts[index], lengths, call, PromptAdapter)

    @classmethod
    def route_finish(cls, adapters: list[PromptAdapter | None], output: Any, call: CallContext) -> Any:
        return keep_call_positions(output, call, PromptAdapter)


def routing_stack_prompts(prompts: list[torch.Tensor | None]) -> torch.Tensor:
    """(n + 1, n_max, d): each prompt in front, zeros behind shorter ones, zeros for none and the base."""
    present = [p for p in prompts if p is not None]
    n_max, dim = max(p.shape[0] for p in present), present[0].shape[1]
    out = present[0].new_zeros(len(prompts) + 1, n_max, dim)
    for i, prompt in enumerate(prompts):
        if prompt is not None:
            out[i, : prompt.shape[0]] = prompt
    return out


def prepend_prompts(model: nn.Module, kw: dict[str, Any], prompts: torch.Tensor, lengths: torch.Tensor,
                    call: CallContext, owner: object) -> dict[str, Any]:
    """The call's arguments with per-sample prompts in front of the tokens: `prompts` (B, n_max, d), of which
    sample i's first `lengths[i]` rows are real.

    The mask gets ones over the prompt, token types zeros, labels -100; positions run 0..n_i − 1 over the prompt
    and continue at n_i over the tokens. When the lengths differ, positions are given explicitly and each sample's
    n_max − n_i padding slots (masked) go where they change nothing the model reads: in front of the prompt for a
    model with causal attention (whose pooling and generation read the last position), after the tokens otherwise
    (whose pooling reads the first). A call continuing a cache that holds the prompts gets the longer mask and
    positions only."""
    n_max = prompts.shape[1]
    lengths = lengths.to(prompts.device)
    uniform = bool((lengths == n_max).all())
    causal = attends_causally(model)
    if continues_cache(kw, call):  # the cache holds the prompts already
        return shift_cached_prompts(kw, lengths, n_max, uniform, model, right_aligned=causal)
    batch, length = batch_and_length(kw)
    embeds, ids = kw.pop("inputs_embeds", None), kw.pop("input_ids", None)
    if embeds is None:
        embeds = model.get_input_embeddings()(ids)  # (B, T, d)
    # Built as [prompt | padding | tokens] (B, n_max + T), then reordered per sample when the lengths differ.
    kw["inputs_embeds"] = torch.cat([prompts.to(embeds.dtype), embeds], dim=1)  # (B, n_max + T, d)
    kw["attention_mask"] = _prepend_prompt_mask(kw.get("attention_mask"), lengths, n_max, uniform, embeds)
    if (types := kw.get("token_type_ids")) is not None:
        kw["token_type_ids"] = torch.cat([types.new_zeros(batch, n_max), types], dim=1)  # (B, T) -> (B, n_max + T)
    positions = kw.get("position_ids")
    if positions is not None or not uniform:
        if "position_ids" not in _forward_parameters(type(model)):
            raise AdapterStateError(f"prompts of different lengths in one batch need explicit positions, which "
                                    f"{type(model).__name__}.forward does not take; give the routed adapters one "
                                    "length")
        if positions is None:
            positions = torch.arange(length, device=embeds.device)
        if positions.dim() == 1 or (positions.dim() == 2 and positions.shape[0] != batch):
            positions = positions.expand(batch, length)  # (T,) or (1, T) -> (B, T)
        virtual = torch.arange(n_max, device=positions.device, dtype=positions.dtype)
        virtual = virtual.expand(*positions.shape[:-1], n_max)  # (n_max,) -> (..., B, n_max); padding is masked
        shift = lengths.view(-1, 1).to(positions.dtype)  # (B, 1): each sample's prompt length
        kw["position_ids"] = torch.cat([virtual, positions + shift], dim=-1)  # (..., B, T) -> (..., B, n_max + T)
    labels = kw.get("labels")
    if labels is not None and labels.dim() >= 2 and tuple(labels.shape[:2]) == (batch, length):
        kw["labels"] = torch.cat([labels.new_full((batch, n_max, *labels.shape[2:]), -100), labels], dim=1)
    scratch = call.scratch(owner)
    scratch["real"] = length  # the call's own tokens: finish keeps only those positions
    if not uniform:
        order = _padding_order(lengths, n_max, length, causal)  # (B, n_max + T)
        for name in ("inputs_embeds", "attention_mask", "token_type_ids", "position_ids", "labels"):
            if isinstance(kw.get(name), torch.Tensor) and kw[name].shape[-1 if name == "position_ids" else 1] == \
                    n_max + length and (name != "labels" or kw[name].dim() >= 2):
                kw[name] = _reorder(kw[name], order, dim=-1 if name == "position_ids" else 1)
        if not causal:
            scratch["offsets"] = lengths  # the tokens of sample i now start at n_i
    return kw


def _padding_order(lengths: torch.Tensor, n_max: int, length: int, causal: bool) -> torch.Tensor:
    """(B, n_max + T): for each sample, the order of the [prompt | padding | tokens] slots that moves its padding
    in front (causal) or behind the tokens (otherwise)."""
    slots = torch.arange(n_max + length, device=lengths.device)
    padding = (slots < n_max) & (slots >= lengths.view(-1, 1))  # (B, n_max + T)
    key = torch.where(padding, torch.full_like(slots, -1 if causal else 1), torch.zeros_like(slots))
    return torch.sort(key, dim=1, stable=True).indices  # stable: prompt and token slots keep their order


def _reorder(values: torch.Tensor, order: torch.Tensor, dim: int) -> torch.Tensor:
    """values with the slots along `dim` (its batch axis just before it, or first) taken in `order` (B, L)."""
    if dim == -1 and values.dim() > 2:  # (..., B, L) positions: the same order for every leading section
        return torch.stack([_reorder(v, order, -1) for v in values])
    index = order.view(*order.shape, *([1] * (values.dim() - 2)))  # (B, L) -> (B, L, 1, ...)
    return values.gather(1, index.expand_as(values))


def attends_causally(model: nn.Module) -> bool:
    """Whether a transformers model is decoder-only: its attention modules say `is_causal = True` (transformers
    sets it on every attention module; encoders' say False)."""
    found = _CAUSAL.get(model)
    if found is None:
        found = _CAUSAL[model] = any(getattr(m, "is_causal", False) is True for m in model.modules())
    return found


_CAUSAL: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def virtual_mask(lengths: torch.Tensor, n_max: int, like: torch.Tensor, right_aligned: bool = False
                 ) -> torch.Tensor:
    """(B, n_max): ones over each sample's n_i virtual slots (the first n_i, or the last with right_aligned),
    zeros over its padding."""
    slots = torch.arange(n_max, device=like.device)
    lengths = lengths.to(like.device).view(-1, 1)
    real = slots >= n_max - lengths if right_aligned else slots < lengths
    return real.to(like.dtype)


def _prepend_prompt_mask(mask: torch.Tensor | None, lengths: torch.Tensor, n_max: int, uniform: bool,
                         embeds: torch.Tensor) -> torch.Tensor | None:
    """The attention mask with each sample's virtual slots in front: ones for its prompt, zeros for its padding."""
    if uniform:
        return prepend_ones(mask, n_max)
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return torch.cat([virtual_mask(lengths, n_max, mask), mask], dim=1)  # (B, n_max + T)


def shift_cached_prompts(kw: dict[str, Any], lengths: torch.Tensor, n_max: int, uniform: bool, model: nn.Module,
                         right_aligned: bool) -> dict[str, Any]:
    """A call whose cache holds n_max virtual positions (n_i of them real: the first, or the last when
    right-aligned) ahead of its tokens: the mask gets them in front, positions move by n_i (explicit ones from the
    cache length when the n_i differ)."""
    if uniform:
        return shift_for_cached_virtual(kw, n_max)
    if "position_ids" not in _forward_parameters(type(model)):
        raise AdapterStateError(f"virtual tokens of different lengths in one batch need explicit positions, which "
                                f"{type(model).__name__}.forward does not take; give the routed adapters one length")
    batch, length = batch_and_length(kw)
    past = int(find_cache(kw).get_seq_length())  # n_max + the earlier tokens
    mask = kw.get("attention_mask")
    if mask is None:  # every token real (generate passes none then): the padding slots still need masking
        mask = torch.ones(batch, past - n_max + length, dtype=torch.long, device=lengths.device)
    kw["attention_mask"] = torch.cat([virtual_mask(lengths, n_max, mask, right_aligned), mask], dim=1)  # (B, n_max + L)
    positions = kw.get("position_ids")
    if positions is not None:
        kw["position_ids"] = positions + lengths.to(positions.device).view(-1, 1)  # (B, 1) against (..., B, T)
    else:
        start = (past - n_max + lengths).view(-1, 1)  # (B, 1): sample i's tokens so far, its prompt included
        kw["position_ids"] = start + torch.arange(length, device=start.device)  # (B, T)
    return kw


def keep_call_positions(output: Any, call: CallContext, owner: object) -> Any:
    """The call's outputs at its own tokens' positions: the last ones, or from each sample's offset."""
    scratch = call.scratch(owner)
    real = scratch.get("real", 0)
    if not real:
        return output
    offsets = scratch.get("offsets")
    if offsets is None:
        return keep_last_positions(output, real)
    return keep_positions(output, offsets.view(-1, 1) + torch.arange(real, device=offsets.device))  # (B, T)


@functools.cache
def _forward_parameters(model_cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_cls.forward).parameters)


# --- shared with prefix tuning -----------------------------------------------------------------------------------
def check_input_side(config: MethodConfig) -> None:
    """Input-side methods attach to the model's inputs: the module-targeting fields do not apply."""
    check(isinstance(config.num_virtual_tokens, int) and config.num_virtual_tokens >= 1, "num_virtual_tokens",
          f"must be an integer >= 1, got {config.num_virtual_tokens!r}")
    for name in ("targets", "layers", "exclude"):
        check(getattr(config, name) is None, name, f"{config.card.name} attaches to the model's inputs, not to "
              "modules; leave it unset")
    check(not config.target_types, "target_types", f"{config.card.name} attaches to the model's inputs; leave it unset")


def input_embeddings(model: nn.Module, config: MethodConfig) -> nn.Module:
    """The model's token embedding table; TargetError for models without one (an MLP, a conv net)."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if embedding is None or getattr(embedding, "weight", None) is None:
        raise TargetError(f"{config.card.name} needs a model with token embeddings (get_input_embeddings()); "
                          f"{type(model).__name__} has none. Use a weight-delta method such as LoRA instead")
    if getattr(text_config(model), "is_encoder_decoder", False):
        raise TargetError(f"{config.card.name} supports decoder-only and encoder-only models; "
                          f"{type(model).__name__} is an encoder-decoder model")
    return embedding


def shift_for_cached_virtual(kw: dict[str, Any], n: int) -> dict[str, Any]:
    """A call whose cache holds n virtual positions ahead of its tokens: the mask gets n ones, positions move by n."""
    kw["attention_mask"] = prepend_ones(kw.get("attention_mask"), n)
    if kw.get("position_ids") is not None:
        kw["position_ids"] = kw["position_ids"] + n
    return kw


_PER_TOKEN_OUTPUTS = ("logits", "last_hidden_state", "start_logits", "end_logits")


def keep_last_positions(output: Any, real: int) -> Any:
    """Per-token outputs cut to their last `real` positions (dim 1), dropping the virtual ones in front. Outputs
    already that short (generate's logits_to_keep) and sequence-level outputs (B, C) stay as they are."""

    def cut(value: torch.Tensor) -> torch.Tensor:
        return value[:, value.shape[1] - real:] if value.shape[1] > real else value

    return per_token_outputs(output, cut)


def keep_positions(output: Any, positions: torch.Tensor) -> Any:
    """Per-token outputs taken at `positions` (B, T) along dim 1 (each sample its own), as keep_last_positions."""

    def take(value: torch.Tensor) -> torch.Tensor:
        index = positions.view(*positions.shape, *([1] * (value.dim() - 2)))  # (B, T) -> (B, T, 1, ...)
        return value.gather(1, index.expand(-1, -1, *value.shape[2:]))

    return per_token_outputs(output, take)


def per_token_outputs(output: Any, change: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`output` with `change` applied to its per-token tensors (logits, hidden states, ...); sequence-level outputs
    (B, C) and plain tuples (return_dict=False: positions cannot be told apart from classes) stay as they are."""
    if isinstance(output, torch.Tensor):
        return change(output) if output.dim() >= 3 else output
    if not isinstance(output, Mapping):
        return output
    for key in _PER_TOKEN_OUTPUTS:
        value = output.get(key)
        if value is not None and (value.dim() >= 3 or key in ("start_logits", "end_logits")):
            output[key] = change(value)
    if output.get("hidden_states") is not None:
        output["hidden_states"] = tuple(change(h) for h in output["hidden_states"])
    return output


def hf_prompt_learning_fields(adapter: AdapterView) -> dict[str, Any]:
    """adapter_config.json fields every Hugging Face PEFT prompt-learning config has, with the model's sizes."""
    config = text_config(adapter.base_model)
    return {"task_type": hf_task_type(adapter.base_model), "num_virtual_tokens": adapter.config.num_virtual_tokens,
            "num_transformer_submodules": 1, "token_dim": config.hidden_size, "num_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads, "inference_mode": True,
            "modules_to_save": adapter.paths(SiteRole.SAVED) or None}


def prompt_learning_fields_from_file(data: Mapping[str, Any]) -> dict[str, Any]:
    """num_virtual_tokens and modules_to_save from a Hugging Face PEFT prompt-learning adapter_config.json."""
    if data.get("num_transformer_submodules") not in (None, 1):
        raise AdapterLoadError(f"num_transformer_submodules={data['num_transformer_submodules']}: the adapter is for "
                               "an encoder-decoder model, which peftlab's input-side methods do not support")
    saved = data.get("modules_to_save")
    unique = tuple(dict.fromkeys(saved or ()))
    # Hugging Face PEFT lists both "classifier" and "score" for every SEQ_CLS adapter: that is our automatic choice.
    automatic = not unique or set(unique) <= {"classifier", "score"}
    return {"num_virtual_tokens": int(data["num_virtual_tokens"]), "modules_to_save": None if automatic else unique}


class PromptLearningFormat(FileFormat):
    """Hugging Face PEFT's prompt-learning configs: the model is wrapped one level less deep ("base_model.")."""

    file_prefix = "base_model."


class PromptTuningFormat(PromptLearningFormat):
    """Hugging Face PEFT's PromptTuningConfig."""

    peft_type = "PROMPT_TUNING"

    def to_file(self, adapter: AdapterView) -> dict[str, Any]:
        config: PromptTuning = adapter.config
        return {**hf_prompt_learning_fields(adapter), "peft_type": "PROMPT_TUNING",
                "prompt_tuning_init": _HF_INITS[config.init], "prompt_tuning_init_text": config.init_text,
                "tokenizer_name_or_path": config.tokenizer_path, "tokenizer_kwargs": None}

    def from_file(self, data: Mapping[str, Any]) -> PromptTuning:
        # The file's tensors replace the initial prompt, so a "TEXT" init is read as "random": no tokenizer is loaded.
        init = "vocab" if data.get("prompt_tuning_init") == "SAMPLE_VOCAB" else "random"
        return PromptTuning(init=init, **prompt_learning_fields_from_file(data))


PromptTuning.model_adapter_type = PromptAdapter
PromptTuning.file_format = PromptTuningFormat(PromptTuning)
