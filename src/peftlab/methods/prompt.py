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
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.core import attach
from peftlab.core.config import MethodConfig, check
from peftlab.core.model_inputs import (
    batch_and_length,
    bind_arguments,
    continues_cache,
    hf_task_type,
    prepend_ones,
    text_config,
)
from peftlab.core.registry import register
from peftlab.core.typology import AttachKind, MethodCard
from peftlab.errors import AdapterLoadError, ConfigError, TargetError

INITS = ("random", "vocab", "text")
_HF_INITS = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB", "text": "TEXT"}


@register
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
    file_prefix: ClassVar[str] = "base_model."
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

    def build_model_adapter(self, model: nn.Module) -> nn.Module:
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

    @classmethod
    def file_type(cls) -> str:
        return "PROMPT_TUNING"

    def to_file_config(self, sites: list[str], saved: list[str]) -> dict[str, Any]:
        return {**hf_prompt_learning_fields(self.num_virtual_tokens, saved), "peft_type": "PROMPT_TUNING",
                "prompt_tuning_init": _HF_INITS[self.init], "prompt_tuning_init_text": self.init_text,
                "tokenizer_name_or_path": self.tokenizer_path, "tokenizer_kwargs": None}

    @classmethod
    def from_file_config(cls, data: Mapping[str, Any]) -> PromptTuning:
        # The file's tensors replace the initial prompt, so a "TEXT" init is read as "random": no tokenizer is loaded.
        init = "vocab" if data.get("prompt_tuning_init") == "SAMPLE_VOCAB" else "random"
        return cls(init=init, **prompt_learning_fields_from_file(data))


class PromptAdapter(nn.Module):
    """The prompt (state: prompt_embeddings (n, d)) and the rewriting of each model call around it."""

    def __init__(self, model: nn.Module, prompt: torch.Tensor) -> None:
        super().__init__()
        self.prompt_embeddings = nn.Parameter(prompt)
        object.__setattr__(self, "_model", model)  # a plain reference: not a submodule, not in the state
        self._real = 0  # tokens of the current call when a prompt was put in front (finish keeps only those)

    def prepare(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        kw = bind_arguments(self._model, args, kwargs)
        n = self.prompt_embeddings.shape[0]
        self._real = 0
        if continues_cache(kw):  # the cache holds the prompt already
            return (), shift_for_cached_virtual(kw, n)
        batch, length = batch_and_length(kw)
        embeds, ids = kw.pop("inputs_embeds", None), kw.pop("input_ids", None)
        if embeds is None:
            embeds = self._model.get_input_embeddings()(ids)  # (B, T, d)
        prompt = self.prompt_embeddings.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)  # (n, d) -> (B, n, d)
        kw["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)  # (B, n + T, d)
        kw["attention_mask"] = prepend_ones(kw.get("attention_mask"), n)
        if (types := kw.get("token_type_ids")) is not None:
            kw["token_type_ids"] = torch.cat([types.new_zeros(batch, n), types], dim=1)  # (B, T) -> (B, n + T)
        if (positions := kw.get("position_ids")) is not None:
            virtual = torch.arange(n, device=positions.device, dtype=positions.dtype)
            virtual = virtual.expand(*positions.shape[:-1], n)  # (n,) -> (..., n)
            kw["position_ids"] = torch.cat([virtual, positions + n], dim=-1)  # (..., T) -> (..., n + T)
        labels = kw.get("labels")
        if labels is not None and labels.dim() >= 2 and tuple(labels.shape[:2]) == (batch, length):
            kw["labels"] = torch.cat([labels.new_full((batch, n, *labels.shape[2:]), -100), labels], dim=1)
        self._real = length
        return (), kw

    def finish(self, output: Any) -> Any:
        real, self._real = self._real, 0
        return keep_last_positions(output, real) if real else output

    def file_config(self) -> dict[str, Any]:
        return hf_model_fields(self._model)


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

    if isinstance(output, torch.Tensor):
        return cut(output) if output.dim() >= 3 else output
    if not isinstance(output, Mapping):
        return output  # a plain tuple (return_dict=False): positions cannot be told apart from classes
    for key in _PER_TOKEN_OUTPUTS:
        value = output.get(key)
        if value is not None and (value.dim() >= 3 or key in ("start_logits", "end_logits")):
            output[key] = cut(value)
    if output.get("hidden_states") is not None:
        output["hidden_states"] = tuple(cut(h) for h in output["hidden_states"])
    return output


def hf_prompt_learning_fields(num_virtual_tokens: int, saved: list[str]) -> dict[str, Any]:
    """adapter_config.json fields every Hugging Face PEFT prompt-learning config has (model fields come later)."""
    return {"task_type": None, "num_virtual_tokens": num_virtual_tokens, "num_transformer_submodules": 1,
            "token_dim": None, "num_layers": None, "num_attention_heads": None, "inference_mode": True,
            "modules_to_save": saved or None}


def hf_model_fields(model: nn.Module) -> dict[str, Any]:
    """The base-model-dependent fields of a Hugging Face PEFT prompt-learning config."""
    config = text_config(model)
    return {"task_type": hf_task_type(model), "token_dim": config.hidden_size,
            "num_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads}


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
