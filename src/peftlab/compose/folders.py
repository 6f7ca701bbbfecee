"""Combining adapter folders into a new one (`peftlab combine`): load the base model, load each adapter, combine them
with `AdaptedModel.add_weighted_adapter`, save the result. The base is a local transformers model folder; its model
class comes from the first adapter's task_type (Hugging Face PEFT's field), as HF PEFT's AutoPeftModel does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from peftlab.core.model import AdaptedModel, load
from peftlab.errors import AdapterCombineError, AdapterLoadError
from peftlab.io.adapter_folder import CONFIG_NAME, read_config_json

AUTO_CLASSES = {"CAUSAL_LM": "AutoModelForCausalLM", "SEQ_CLS": "AutoModelForSequenceClassification",
                "TOKEN_CLS": "AutoModelForTokenClassification", "QUESTION_ANS": "AutoModelForQuestionAnswering",
                "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM", "FEATURE_EXTRACTION": "AutoModel", None: "AutoModel"}


def load_base(base: Path, adapter: Path) -> nn.Module:
    """The base model for `adapter`, read from the local folder `base` with the class its task_type names."""
    if not (base / "config.json").is_file():
        raise AdapterLoadError(f"{base} is not a transformers model folder (no config.json); pass the folder the "
                               "adapters were trained on, e.g. one written by model.save_pretrained")
    config_file = adapter / CONFIG_NAME
    task = read_config_json(config_file).get("task_type") if config_file.is_file() else None
    if task not in AUTO_CLASSES:
        raise AdapterLoadError(f"{config_file}: task_type {task!r} names no model class peftlab knows "
                               f"({', '.join(str(t) for t in AUTO_CLASSES if t)})")
    import transformers

    return getattr(transformers, AUTO_CLASSES[task]).from_pretrained(base)


def combine_folders(base: Path, adapters: Sequence[Path], weights: Sequence[float], out: Path,
                    **options: Any) -> AdaptedModel:
    """Write to `out` the combination of the adapter folders `adapters` with `weights` (options: those of
    `add_weighted_adapter`, e.g. combination_type="cat"); returns the model holding it as "default"."""
    if not adapters:
        raise AdapterCombineError("no adapter folders to combine")
    names = [f"source_{i}" for i in range(len(adapters))]
    model = load(load_base(base, adapters[0]), adapters[0], names[0])
    for name, folder in zip(names[1:], adapters[1:]):
        model.load_adapter(folder, name)
    model.add_weighted_adapter(names, weights, "default", **options)
    model.save(out, adapter_names=["default"])
    return model
