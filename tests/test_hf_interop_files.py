"""Adapter folders as Hugging Face PEFT writes and reads them, beyond equal outputs: task types for its
AutoPeftModel classes, resolved rank patterns, and clear refusals of files peftlab cannot read faithfully."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import peftlab
from tests.tiny_models import tiny_bert, tiny_llama

pytest.importorskip("peft")
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, LoraConfig, PeftModel, get_peft_model

IDS = torch.randint(2, 100, (2, 8), generator=torch.Generator().manual_seed(1))


def saved_base(build, folder: Path) -> nn.Module:
    """A tiny model saved and reloaded, so that its config names a local path (no hub)."""
    torch.manual_seed(0)
    build().save_pretrained(folder)
    return type(build()).from_pretrained(folder).eval()


@pytest.mark.parametrize(("build", "auto", "config"), [
    (tiny_llama, AutoPeftModelForCausalLM, peftlab.LoRA(r=4, targets=["q_proj", "v_proj"], init="random")),
    (tiny_bert, AutoPeftModelForSequenceClassification, peftlab.LoRA(r=4, targets=["query"], init="random")),
], ids=["causal-lm", "seq-cls-with-head"])
def test_auto_peft_model_loads_our_folder(build, auto, config: peftlab.MethodConfig, tmp_path: Path) -> None:
    base = saved_base(build, tmp_path / "base")
    ours = peftlab.adapt(copy.deepcopy(base), config).eval()
    ours.save(tmp_path / "adapter")
    hf = auto.from_pretrained(tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=IDS).logits, ours(input_ids=IDS).logits, atol=1e-5, rtol=0)


def test_classifier_without_saved_head_writes_no_task_type(tmp_path: Path) -> None:
    """HF PEFT's SEQ_CLS expects the head in the file; without one, PeftModel.from_pretrained must still work."""
    torch.manual_seed(0)
    base = tiny_bert().eval()
    peftlab.adapt(copy.deepcopy(base), peftlab.LoRA(r=4, targets=["query"], modules_to_save=[])).save(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["task_type"] is None
    PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)


def test_rank_pattern_with_an_override_loads_in_hf(tmp_path: Path) -> None:
    """A general key plus a specific override: the file's sorted keys must not change which one applies."""
    torch.manual_seed(0)
    base = tiny_llama().eval()
    config = peftlab.LoRA(r=4, targets=["q_proj"], init="random", rank_pattern={"q_proj": 2, r"layers\.0\..*": 6},
                          alpha_pattern={"q_proj": 3.0, r"layers\.0\..*": 12.0})
    ours = peftlab.adapt(copy.deepcopy(base), config).eval()
    ours.save(tmp_path)
    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=IDS).logits, ours(input_ids=IDS).logits, atol=1e-5, rtol=0)


def test_base_changing_init_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = tiny_llama().eval()
    get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa")
                   ).save_pretrained(tmp_path)
    with pytest.raises(peftlab.AdapterLoadError, match="changed the base weights"):
        peftlab.load(copy.deepcopy(base), tmp_path)


def hf_folder(tmp_path: Path, **edits: object) -> Path:
    get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config.update(edits)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(("edits", "message"), [
    (dict(lora_dropout=None), "dropout=None must be a finite number"),
    (dict(r="eight"), "r='eight' must be an integer"),
    (dict(layers_to_transform=[1], layers_pattern="stack"), "layers_pattern='stack'"),
])
def test_malformed_hf_config_names_the_field(edits: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(peftlab.AdapterLoadError, match=message):
        peftlab.load(tiny_llama(), hf_folder(tmp_path, **edits))


def test_adapter_in_a_subfolder_is_pointed_to(tmp_path: Path) -> None:
    get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]), adapter_name="task_a"
                   ).save_pretrained(tmp_path)
    with pytest.raises(peftlab.AdapterLoadError, match=r"subfolders \['task_a'\] hold adapters"):
        peftlab.load(tiny_llama(), tmp_path)


def test_unsupported_layer_kind_says_so(tmp_path: Path) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c3 = nn.Conv3d(2, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.c3(x).mean((2, 3, 4)))

    get_peft_model(Net(), LoraConfig(r=4, target_modules=["c3"])).save_pretrained(tmp_path)
    with pytest.raises(peftlab.AdapterLoadError, match="peftlab has no LoRA for Conv3d layers"):
        peftlab.load(Net(), tmp_path)


def test_edited_adapter_config_is_what_both_libraries_read(tmp_path: Path) -> None:
    """Our folder carries our full config in the safetensors metadata; once someone edits adapter_config.json, the
    JSON is the truth for peftlab as it is for HF PEFT."""
    torch.manual_seed(0)
    base = tiny_llama().eval()
    peftlab.adapt(copy.deepcopy(base), peftlab.LoRA(r=4, alpha=8, targets=["q_proj", "v_proj"], init="random")
                  ).save(tmp_path)
    assert peftlab.load(copy.deepcopy(base), tmp_path).configs["default"].init == "random"  # metadata read
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["lora_alpha"] = 32
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    ours = peftlab.load(copy.deepcopy(base), tmp_path).eval()
    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert ours.configs["default"].alpha == 32
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=IDS).logits, hf(input_ids=IDS).logits, atol=1e-5, rtol=0)


def test_saved_embedding_copy_is_checked_not_refused(tmp_path: Path) -> None:
    """HF PEFT saves the weight of an adapted embed_tokens / lm_head next to the adapter: accepted when it is the
    model's own, refused by name when the adapter was trained on a changed base."""
    torch.manual_seed(0)
    base = tiny_llama().eval()
    hf = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "embed_tokens", "lm_head"],
                                                        init_lora_weights=False)).eval()
    hf.save_pretrained(tmp_path)
    ours = peftlab.load(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=IDS).logits, hf(input_ids=IDS).logits, atol=1e-5, rtol=0)
        base.model.embed_tokens.weight[0] += 1.0
    with pytest.raises(peftlab.AdapterLoadError, match="differs from this model's"):
        peftlab.load(base, tmp_path)


def test_keys_with_the_adapter_name_load(tmp_path: Path) -> None:
    """A plain state_dict export keeps the adapter's name in each key ("lora_A.default.weight"); HF PEFT reads it."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    base = tiny_llama().eval()
    hf = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    hf.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    save_file({k.replace(".weight", ".default.weight"): v for k, v in load_file(weights).items()}, weights,
              metadata={"format": "pt"})
    ours = peftlab.load(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=IDS).logits, hf.eval()(input_ids=IDS).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("nulls", [("feedforward_modules",), ("feedforward_modules", "target_modules")])
def test_ia3_config_without_module_lists_uses_the_architecture_defaults(nulls: tuple[str, ...],
                                                                       tmp_path: Path) -> None:
    from peft import IA3Config

    torch.manual_seed(0)
    base = tiny_llama().eval()
    get_peft_model(copy.deepcopy(base), IA3Config(init_ia3_weights=False)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config.update(dict.fromkeys(nulls))
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    ours = peftlab.load(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=IDS).logits, hf(input_ids=IDS).logits, atol=1e-5, rtol=0)
