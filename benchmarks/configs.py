"""The benchmark's configurations: the floor, full fine-tuning, and PEFT methods that both libraries implement.

Each PEFT method is described once, with the same hyperparameters for both sides: Hugging Face PEFT through its
public config classes (`LoraConfig`, `IA3Config`, ...), peftlab through `peftlab.config_for(method_id, **fields)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from benchmarks.models import ModelPreset

RANK = 8
ALPHA = 16
VIRTUAL_TOKENS = 20


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One PEFT configuration, measured with both libraries."""

    id: str
    title: str
    peftlab_ids: tuple[str, ...]  # peftlab method ids that implement it (first registered one wins)
    hf_config: Callable[[ModelPreset], Any]  # -> a peft.PeftConfig
    peftlab_fields: Callable[[ModelPreset], dict[str, Any]]  # -> fields for peftlab.config_for


def _lora_fields(targets: Callable[[ModelPreset], tuple[str, ...]],
                 dropout: float) -> Callable[[ModelPreset], dict[str, Any]]:
    return lambda p: {"r": RANK, "alpha": float(ALPHA), "dropout": dropout, "targets": targets(p)}


def _hf_lora(targets: Callable[[ModelPreset], tuple[str, ...]], dropout: float,
             dora: bool = False) -> Callable[[ModelPreset], Any]:
    def make(p: ModelPreset) -> Any:
        from peft import LoraConfig

        return LoraConfig(task_type=p.hf_task_type, r=RANK, lora_alpha=ALPHA, lora_dropout=dropout,
                          target_modules=list(targets(p)), use_dora=dora)

    return make


def ia3_targets(model_type: str) -> tuple[list[str], list[str]]:
    """Hugging Face PEFT's default IA3 targets and feed-forward modules for a model type."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    return list(TARGETS[model_type]), list(FF[model_type])


def _model_type(p: ModelPreset) -> str:
    return "llama" if p.task == "causal-lm" else "bert"


def _hf_ia3(p: ModelPreset) -> Any:
    from peft import IA3Config

    targets, feedforward = ia3_targets(_model_type(p))
    return IA3Config(task_type=p.hf_task_type, target_modules=targets, feedforward_modules=feedforward)


def _peftlab_ia3(p: ModelPreset) -> dict[str, Any]:
    targets, feedforward = ia3_targets(_model_type(p))
    return {"targets": tuple(targets), "feedforward": tuple(feedforward)}


def _hf_prompt(p: ModelPreset) -> Any:
    from peft import PromptTuningConfig

    return PromptTuningConfig(task_type=p.hf_task_type, num_virtual_tokens=VIRTUAL_TOKENS)


def _hf_prefix(p: ModelPreset) -> Any:
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=p.hf_task_type, num_virtual_tokens=VIRTUAL_TOKENS)


def _qv(p: ModelPreset) -> tuple[str, ...]:
    return p.qv_targets


def _all(p: ModelPreset) -> tuple[str, ...]:
    return p.all_linear_targets


METHODS: dict[str, MethodSpec] = {m.id: m for m in (
    MethodSpec("lora_qv", f"LoRA r={RANK} q,v (dropout 0.05)", ("lora",), _hf_lora(_qv, 0.05), _lora_fields(_qv, 0.05)),
    MethodSpec("lora_all", f"LoRA r={RANK} all linear, dropout 0.05", ("lora",), _hf_lora(_all, 0.05),
               _lora_fields(_all, 0.05)),
    MethodSpec("lora_all_nodrop", f"LoRA r={RANK} all linear, dropout 0", ("lora",), _hf_lora(_all, 0.0),
               _lora_fields(_all, 0.0)),
    MethodSpec("dora_qv", f"DoRA r={RANK} q,v (dropout 0.05)", ("dora",), _hf_lora(_qv, 0.05, dora=True),
               _lora_fields(_qv, 0.05)),
    MethodSpec("dora_qv_nodrop", f"DoRA r={RANK} q,v, dropout 0", ("dora",), _hf_lora(_qv, 0.0, dora=True),
               _lora_fields(_qv, 0.0)),
    MethodSpec("ia3", "IA3 (HF default targets)", ("ia3",), _hf_ia3, _peftlab_ia3),
    MethodSpec("prompt", f"prompt tuning, {VIRTUAL_TOKENS} tokens", ("prompt",), _hf_prompt,
               lambda p: {"num_virtual_tokens": VIRTUAL_TOKENS}),
    MethodSpec("prefix", f"prefix tuning, {VIRTUAL_TOKENS} tokens", ("prefix",), _hf_prefix,
               lambda p: {"num_virtual_tokens": VIRTUAL_TOKENS}),
)}

# Configurations measured once (no library pair), and the inference/adapter jobs (see benchmarks.inference).
BASELINES: dict[str, str] = {"floor": "floor: fwd + activation-only bwd", "full": "full fine-tuning"}
INFERENCE: dict[str, str] = {"infer": "inference latency", "switch": "adapter load / switch"}
ALL_CONFIGS: tuple[str, ...] = (*BASELINES, *METHODS, *INFERENCE)

# The LoRA adapter used by the inference and adapter-switching jobs.
INFERENCE_METHOD = "lora_all_nodrop"


def title(config_id: str) -> str:
    """A readable name for a configuration id."""
    if config_id in METHODS:
        return METHODS[config_id].title
    return {**BASELINES, **INFERENCE}.get(config_id, config_id)


def check_configs(ids: list[str]) -> list[str]:
    """Validate configuration ids (ValueError naming the valid ones)."""
    unknown = [i for i in ids if i not in ALL_CONFIGS]
    if unknown:
        raise ValueError(f"unknown configuration(s) {unknown}; choose from {', '.join(ALL_CONFIGS)}")
    return ids
