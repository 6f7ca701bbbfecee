"""Bad input fails early with peftlab's own errors, naming the problem and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import peftlab
from tests.tiny_models import tiny_bert


def test_unknown_field_names_the_closest() -> None:
    with pytest.raises(peftlab.ConfigError, match=r"unknown field\(s\) 'rr' \(did you mean 'r'\?\)"):
        peftlab.LoRA(rr=3)


@pytest.mark.parametrize(("fields", "message"), [
    ({"r": 0}, "r: must be an integer >= 1"),
    ({"alpha": -1.0}, r"alpha=-1.0 is out of range; valid range is \(0.0, inf\]"),
    ({"dropout": 1.0}, r"dropout=1.0 is out of range; valid range is \[0.0, 1.0\)"),
    ({"bias": "some"}, "bias: must be one of"),
    ({"targets": "(unclosed"}, "not a valid regular expression"),
    ({"layers": [-1]}, "layer indices must be >= 0"),
    ({"targets": 5}, "targets must be a list"),
    ({"r": True}, "r=True must be an integer"),
    ({"alpha": "8"}, "alpha='8' must be a finite number"),
    ({"alpha": float("inf")}, "alpha=inf must be a finite number"),
    ({"dropout": None}, "dropout=None must be a finite number"),
    ({"use_rslora": "yes"}, "use_rslora='yes' must be True or False"),
    ({"rank_pattern": [1]}, r"rank_pattern=\[1\] must be a dict"),
    ({"rank_pattern": {"[": 2}}, "key '\\[' is not a valid regular expression"),
])
def test_invalid_config_fails_at_construction(fields: dict, message: str) -> None:
    with pytest.raises(peftlab.ConfigError, match=message) as info:
        peftlab.LoRA(**fields)
    assert isinstance(info.value, ValueError)


def test_config_round_trips_through_json() -> None:
    config = peftlab.DoRA(r=4, alpha=32, targets=["query"], rank_pattern={"value": 2}, layers=[1], dropout=0.1)
    again = peftlab.MethodConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and type(again) is peftlab.DoRA
    with pytest.raises(peftlab.ConfigError, match="unknown field"):
        peftlab.MethodConfig.from_dict({"method": "lora", "rank": 4})
    with pytest.raises(peftlab.ConfigError, match="did you mean lora"):
        peftlab.config_for("lorra")
    # config_for is how command lines build configs from names: an unknown field is a ConfigError, with the closest
    # valid names, not Python's TypeError from the constructor
    with pytest.raises(peftlab.ConfigError, match=r"unknown field\(s\) 'alpah' \(did you mean 'alpha'\?\), 'rnk'"):
        peftlab.config_for("lora", rnk=4, alpah=8)


@pytest.mark.parametrize("name", ["my adapter", "1st", "a-b", "", "x.y", "half", "train", "to"])
def test_adapter_names_must_be_identifiers(name: str) -> None:
    with pytest.raises(peftlab.AdapterStateError, match="not a plain identifier|name of a torch module method"):
        peftlab.adapt(tiny_bert(), peftlab.LoRA(), adapter_name=name)


def test_adapter_state_errors() -> None:
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA())
    with pytest.raises(peftlab.AdapterStateError, match="no adapter named 'nope'"):
        model.set_adapter("nope")
    with pytest.raises(peftlab.AdapterStateError, match="exists already"):
        model.add_adapter("default", peftlab.LoRA())
    model.merge_adapter()
    with pytest.raises(peftlab.AdapterStateError, match="call unmerge"), model.disable_adapters():
        pass


def test_saving_onto_a_file_and_adapting_a_non_module_fail_at_the_call(tmp_path: Path) -> None:
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA())
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(peftlab.AdapterSaveError, match="taken is a file; pass a folder path"):
        model.save(tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "not a folder"
    for call in (lambda: peftlab.adapt("bert", peftlab.LoRA()), lambda: peftlab.load("bert", tmp_path)):
        with pytest.raises(TypeError, match=r"takes a torch.nn.Module \(e.g. a transformers model\), got str"):
            call()


def _save_for(hidden: int, folder: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, num_labels=3)
    peftlab.adapt(BertForSequenceClassification(config), peftlab.LoRA(r=4)).save(folder)


def test_loading_onto_the_wrong_base_names_the_tensor(tmp_path: Path) -> None:
    _save_for(48, tmp_path / "big")
    with pytest.raises(peftlab.AdapterLoadError, match=r"query.lora_A.weight' has shape \(4, 48\).*needs \(4, 32\)"):
        peftlab.load(tiny_bert(), tmp_path / "big")


def test_failed_load_leaves_nothing_attached(tmp_path: Path) -> None:
    _save_for(48, tmp_path / "big")
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA())
    with pytest.raises(peftlab.AdapterLoadError):
        model.load_adapter(tmp_path / "big", "other")
    assert model.adapters == ["default"]


def test_only_safetensors_and_json_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    torch.save({}, folder / "adapter_model.bin")
    with pytest.raises(peftlab.AdapterLoadError, match="reads only safetensors"):
        peftlab.load(tiny_bert(), folder)
    with pytest.raises(peftlab.AdapterLoadError, match="no adapter_config.json"):
        peftlab.load(tiny_bert(), tmp_path)


def test_unknown_peft_type_is_refused(tmp_path: Path) -> None:
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA())
    model.save(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    data["peft_type"] = "BOFT"
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "adapter_model.safetensors")
    save_file(tensors, tmp_path / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(peftlab.AdapterLoadError, match="'BOFT' is not a method peftlab implements"):
        peftlab.load(tiny_bert(), tmp_path)
