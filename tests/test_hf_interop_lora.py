"""LoRA and DoRA files exchanged with Hugging Face PEFT, both ways, on tiny models built from configs.

Every case runs in both directions:
    HF PeftModel.save_pretrained -> peftlab.load          gives the HF model's outputs;
    peftlab model.save           -> PeftModel.from_pretrained gives peftlab's outputs.
Each side starts from a deepcopy of one seeded base model. All adapter tensors (A, B, magnitudes, saved heads,
biases) are moved off their initial values, so no tensor can be dropped or mis-scaled unnoticed. On top of equal
outputs (float32, within 1e-5), we check that re-saving on the receiving side writes the same tensors under the same
keys, and that merge_and_unload on both sides yields the same plain weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import nn

import peftlab
from peftlab.core.layer import AdaptedLayer
from tests.tiny_models import MODELS, TinyModel, tiny_bert, tiny_llama

pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model

TINY = {m.name: m for m in MODELS}
BERT, GPT2, CONVNET = TINY["bert"], TINY["gpt2"], TINY["convnet"]
LLAMA = TinyModel("llama", tiny_llama, BERT.inputs)  # same token batch, right-padded second row


class Conv1dNet(nn.Module):
    """A speech-style front end: strided 1-d convolutions over a waveform, then a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 6, 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(6, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (B, 8, L/2)
        return self.fc(h.mean(dim=2))  # (B, 8) -> (B, 3)


CONV1D = TinyModel("conv1d", Conv1dNet,
                   lambda: {"x": torch.randn(2, 1, 20, generator=torch.Generator().manual_seed(1))})
ATOL = 1e-5


@dataclass(frozen=True)
class Case:
    """One adapter, described once for each library. `hf` holds LoraConfig keyword arguments."""

    id: str
    tiny: TinyModel
    hf: dict[str, Any]
    ours: Callable[[], peftlab.MethodConfig]


QV = ["query", "value"]
REGEX = r".*\.layer\.1\.attention\.self\.(query|key)"  # full match, in both libraries
CASES = [
    Case("bert-lora-qv", BERT, dict(r=4, lora_alpha=8, target_modules=QV),
         lambda: peftlab.LoRA(r=4, alpha=8, targets=QV, modules_to_save=[], init="random")),
    Case("bert-rslora-patterns", BERT,
         dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["query", "key", "value"],
              rank_pattern={"value": 2, r"layer\.1\.attention\.self\.query": 6}, alpha_pattern={"key": 3.0}),
         lambda: peftlab.LoRA(r=4, alpha=8, use_rslora=True, targets=["query", "key", "value"],
                              rank_pattern={"value": 2, r"layer\.1\.attention\.self\.query": 6},
                              alpha_pattern={"key": 3.0}, modules_to_save=[], init="random")),
    Case("gpt2-fan-in-fan-out", GPT2, dict(r=4, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True),
         lambda: peftlab.LoRA(r=4, alpha=16, targets=["c_attn"], init="random")),
    Case("bert-dora-qv", BERT, dict(r=4, lora_alpha=8, target_modules=QV, use_dora=True),
         lambda: peftlab.DoRA(r=4, alpha=8, targets=QV, modules_to_save=[], init="random")),
    Case("llama-dora-qv", LLAMA, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True),
         lambda: peftlab.DoRA(r=4, alpha=8, targets=["q_proj", "v_proj"], init="random")),
    # HF's SEQ_CLS task adds modules_to_save=["classifier", "score"]; peftlab adds the classifier head by itself.
    Case("bert-head-and-lora-only-bias", BERT,
         dict(r=4, lora_alpha=8, target_modules=QV, task_type="SEQ_CLS", bias="lora_only"),
         lambda: peftlab.LoRA(r=4, alpha=8, targets=QV, bias="lora_only", init="random")),
    Case("bert-head-and-all-biases", BERT,
         dict(r=4, lora_alpha=8, target_modules=QV, task_type="SEQ_CLS", bias="all"),
         lambda: peftlab.LoRA(r=4, alpha=8, targets=QV, bias="all", init="random")),
    Case("bert-embedding", BERT, dict(r=4, lora_alpha=8, target_modules=["word_embeddings"]),
         lambda: peftlab.LoRA(r=4, alpha=8, targets=["word_embeddings"], modules_to_save=[], init="random")),
    Case("convnet-conv2d", CONVNET, dict(r=2, lora_alpha=4, target_modules=["conv1", "conv2"]),
         lambda: peftlab.LoRA(r=2, alpha=4, targets=["conv1", "conv2"], init="random")),
    Case("convnet-dora-conv2d", CONVNET, dict(r=2, lora_alpha=4, target_modules=["conv1", "conv2"], use_dora=True),
         lambda: peftlab.DoRA(r=2, alpha=4, targets=["conv1", "conv2"], init="random")),
    Case("conv1d-dora", CONV1D, dict(r=2, lora_alpha=4, target_modules=["conv1", "conv2"], use_dora=True),
         lambda: peftlab.DoRA(r=2, alpha=4, targets=["conv1", "conv2"], init="random")),
    Case("conv1d-lora", CONV1D, dict(r=2, lora_alpha=4, target_modules=["conv1", "conv2"]),
         lambda: peftlab.LoRA(r=2, alpha=4, targets=["conv1", "conv2"], init="random")),
    Case("bert-regex-targets", BERT, dict(r=4, lora_alpha=8, target_modules=REGEX),
         lambda: peftlab.LoRA(r=4, alpha=8, targets=REGEX, modules_to_save=[], init="random")),
    Case("bert-layers-to-transform", BERT, dict(r=4, lora_alpha=8, target_modules=QV, layers_to_transform=[1]),
         lambda: peftlab.LoRA(r=4, alpha=8, targets=QV, layers=[1], modules_to_save=[], init="random")),
]


def _base(tiny: TinyModel) -> nn.Module:
    """The seeded base model; each library gets its own deepcopy of it. transformers initialises biases to zero, which
    would hide a file holding the bias delta instead of the absolute bias (bias="lora_only"): make them non-zero."""
    model = tiny.make(seed=0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.add_(torch.randn(param.shape, generator=g) * 0.1)
    return model


def _perturb(model: nn.Module, seed: int = 3) -> None:
    """Move every trainable tensor (A, B, magnitude, saved head, bias) off its initial value, deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=g) * 0.1)


def _file_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118  (a safetensors handle)


def _without_wrapper_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF PEFT's bias="all" files also hold the biases inside its saved-module wrapper; peftlab reads the head's own
    and does not write these copies."""
    return {k: v for k, v in tensors.items() if ".original_module." not in k and ".modules_to_save." not in k}


def _same_tensors(written: Path, rewritten: Path) -> None:
    """The receiving side writes back exactly the tensors (keys, shapes, values) it read."""
    first, second = (_without_wrapper_copies(_file_tensors(folder)) for folder in (written, rewritten))
    assert sorted(second) == sorted(first)
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, atol=1e-6, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


def _outputs(tiny: TinyModel, model: nn.Module) -> torch.Tensor:
    """The model's output, plus the last hidden state for transformers (tiny heads give logits of ~0.01, too small
    to show a wrong adapter at 1e-5), flattened into one vector."""
    inputs = tiny.inputs()
    if "input_ids" not in inputs:
        return tiny.run(model).flatten()
    out = model(**inputs, output_hidden_states=True)
    return torch.cat([out.logits.flatten(), out.hidden_states[-1].flatten()])


def _same_model(hf: nn.Module, ours: peftlab.AdaptedModel, tiny: TinyModel, base_out: torch.Tensor) -> None:
    """Equal outputs; equal merged weights; equal outputs of the merged plain models."""
    hf.eval()
    ours.eval()
    with torch.no_grad():
        hf_out, ours_out = _outputs(tiny, hf), _outputs(tiny, ours)
        assert not torch.allclose(hf_out, base_out, atol=1e-3), "the adapter does not change the output"
        torch.testing.assert_close(ours_out, hf_out, atol=ATOL, rtol=0)
        hf_plain, ours_plain = hf.merge_and_unload(), ours.merge_and_unload()
        assert type(ours_plain) is type(hf_plain)
        assert not any(isinstance(m, AdaptedLayer) for m in ours_plain.modules())
        hf_state, ours_state = hf_plain.state_dict(), ours_plain.state_dict()
        assert sorted(ours_state) == sorted(hf_state)
        for key, value in hf_state.items():
            torch.testing.assert_close(ours_state[key], value, atol=ATOL, rtol=0,
                                       msg=lambda m, k=key: f"merged {k}: {m}")
        torch.testing.assert_close(_outputs(tiny, ours_plain), hf_out, atol=ATOL, rtol=0)
        torch.testing.assert_close(_outputs(tiny, hf_plain), hf_out, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hf_saved_adapter_loads_in_peftlab(case: Case, tmp_path: Path) -> None:
    base = _base(case.tiny)
    with torch.no_grad():
        base_out = _outputs(case.tiny, base)
    hf = get_peft_model(copy.deepcopy(base), LoraConfig(**case.hf))
    _perturb(hf)
    hf.save_pretrained(tmp_path / "hf")

    ours = peftlab.load(copy.deepcopy(base), tmp_path / "hf")
    ours.save(tmp_path / "ours")
    _same_tensors(tmp_path / "hf", tmp_path / "ours")
    _same_model(hf, ours, case.tiny, base_out)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_peftlab_saved_adapter_loads_in_hf(case: Case, tmp_path: Path) -> None:
    base = _base(case.tiny)
    with torch.no_grad():
        base_out = _outputs(case.tiny, base)
    ours = peftlab.adapt(copy.deepcopy(base), case.ours())
    _perturb(ours)
    ours.save(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert set(written) <= {f.name for f in dataclasses.fields(LoraConfig)}, "keys Hugging Face PEFT does not know"
    assert written["fan_in_fan_out"] == case.hf.get("fan_in_fan_out", False)  # true exactly for GPT-2's Conv1D

    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    hf.save_pretrained(tmp_path / "hf")
    _same_tensors(tmp_path / "ours", tmp_path / "hf")
    _same_model(hf, ours, case.tiny, base_out)


def test_sites_match_hf_targeting() -> None:
    """Regex targets, layer filters and rank patterns pick the same modules, with the same ranks, in both libraries."""
    for case in CASES:
        base = _base(case.tiny)
        hf = get_peft_model(copy.deepcopy(base), LoraConfig(**case.hf))
        hf_ranks = {name.removeprefix("base_model.model."): module.r["default"] for name, module in hf.named_modules()
                    if hasattr(module, "lora_A") and isinstance(getattr(module, "r", None), dict)}
        ours = peftlab.adapt(copy.deepcopy(base), case.ours())
        ours_ranks = {path: (site.lora_A.weight if hasattr(site, "lora_A") else site.lora_embedding_A).shape[0]
                      for path, (site, _) in ours.site_adapters("default").items() if hasattr(site, "scaling")}
        assert ours_ranks == hf_ranks, case.id


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_bias_all_trains_every_bias_and_adapts_only_the_targets(dora: bool) -> None:
    """bias="all" trains every bias of the model (HF PEFT's meaning) while the low-rank update stays on the targets:
    the same trainable parameters as HF PEFT, site by site (it once put a full LoRA on every Linear with a bias)."""
    base = _base(BERT)
    hf = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=QV, bias="all",
                                                        use_dora=dora, task_type="SEQ_CLS"))
    method = peftlab.DoRA if dora else peftlab.LoRA
    ours = peftlab.adapt(copy.deepcopy(base), method(r=4, alpha=8, targets=QV, bias="all"))
    sites = ours.site_adapters("default")
    lora_paths = {path for path, (site, _) in sites.items() if hasattr(site, "lora_A")}
    hf_lora_paths = {name.removeprefix("base_model.model.") for name, module in hf.named_modules()
                     if hasattr(module, "lora_A") and isinstance(getattr(module, "r", None), dict)}
    assert lora_paths == hf_lora_paths and all(path.rsplit(".", 1)[-1] in QV for path in lora_paths)
    bias_paths = {path for path, (site, _) in sites.items() if getattr(site, "bias_delta", None) is not None}
    hf_bias_paths = {name.removeprefix("base_model.model.").removesuffix(".bias").removesuffix(".base_layer")
                     for name, param in hf.named_parameters()
                     if param.requires_grad and name.endswith(".bias") and "modules_to_save" not in name}
    assert bias_paths == hf_bias_paths and lora_paths < bias_paths
    trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in hf.parameters() if p.requires_grad)


# --- files peftlab must refuse, naming what is wrong ----------------------------------------------------------------
def _hf_bert_adapter(folder: Path, bert: nn.Module | None = None, **config: Any) -> Path:
    torch.manual_seed(0)
    model = get_peft_model(bert if bert is not None else tiny_bert(), LoraConfig(**{"target_modules": QV, **config}))
    model.save_pretrained(folder)
    return folder


def _assert_nothing_attached(model: nn.Module) -> None:
    assert not any(isinstance(m, AdaptedLayer) for m in model.modules()), "a failed load left adapters attached"


def test_adapter_for_bigger_model_names_the_tensor(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    bigger = BertForSequenceClassification(BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                                      intermediate_size=64, vocab_size=100,
                                                      max_position_embeddings=64, num_labels=3))
    folder = _hf_bert_adapter(tmp_path / "big", bigger, r=4)
    base = BERT.make()
    with pytest.raises(peftlab.AdapterLoadError, match=r"tensor 'base_model\.model\.bert\.encoder\.layer\.\d\."
                                                       r"attention\.self\.(query|value)\.lora_[AB]\.weight' has shape"):
        peftlab.load(base, folder)
    _assert_nothing_attached(base)


def test_rank_mismatch_names_the_tensor(tmp_path: Path) -> None:
    folder = _hf_bert_adapter(tmp_path / "r8", r=8)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 4  # the file's tensors have rank 8
    (folder / "adapter_config.json").write_text(json.dumps(config))
    base = BERT.make()
    with pytest.raises(peftlab.AdapterLoadError, match=r"tensor '[^']*lora_[AB]\.weight' has shape \((8, 32|32, 8)\)"):
        peftlab.load(base, folder)
    _assert_nothing_attached(base)


def test_pickled_bin_only_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    get_peft_model(tiny_bert(), LoraConfig(target_modules=QV)).save_pretrained(tmp_path / "bin",
                                                                             safe_serialization=False)
    assert (tmp_path / "bin" / "adapter_model.bin").is_file()
    assert not (tmp_path / "bin" / "adapter_model.safetensors").exists()
    with pytest.raises(peftlab.AdapterLoadError, match=r"no adapter_model\.safetensors.*adapter_model\.bin"):
        peftlab.load(BERT.make(), tmp_path / "bin")


def test_lora_bias_is_refused(tmp_path: Path) -> None:
    folder = _hf_bert_adapter(tmp_path / "lora_bias", lora_bias=True)
    base = BERT.make()
    with pytest.raises(peftlab.AdapterLoadError, match="lora_bias=True"):
        peftlab.load(base, folder)
    _assert_nothing_attached(base)


@pytest.mark.parametrize("option, value", [("use_qalora", True), ("layer_replication", [[0, 2]]),
                                           ("trainable_token_indices", [1, 2])])
def test_unsupported_options_are_refused(option: str, value: Any, tmp_path: Path) -> None:
    folder = _hf_bert_adapter(tmp_path / option)
    config = json.loads((folder / "adapter_config.json").read_text())
    config[option] = value
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(peftlab.AdapterLoadError, match=option):
        peftlab.load(BERT.make(), folder)
