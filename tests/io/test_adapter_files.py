"""Loading reads adapter_config.json as its one source of truth, bounds memory by the file before building anything,
and refuses tensors of the wrong kind or holding NaN/infinity (unless asked); saving refuses NaN weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import peftlab
from peftlab.cli import main
from tests.io.children import load_measured, small_base
from tests.tiny_models import tiny_llama

X = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))


def saved(folder: Path, config: peftlab.MethodConfig | None = None) -> peftlab.AdaptedModel:
    model = peftlab.adapt(small_base(), config or peftlab.LoRA(r=4, alpha=8, targets=["0", "1"], init="random"))
    model.save(folder)
    return model


def edit_config(folder: Path, **changes: object) -> None:
    data = json.loads((folder / "adapter_config.json").read_text())
    data.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(data))


def rewrite_weights(folder: Path, change, metadata_change: dict[str, str] | None = None) -> None:
    """Rewrite adapter_model.safetensors with changed tensors (and metadata), as someone editing the file would."""
    path = folder / "adapter_model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={**metadata, **(metadata_change or {})})


# --- one source of truth ------------------------------------------------------------------------------------------
def test_a_config_planted_in_the_weights_file_does_not_override_the_json(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The metadata copy says alpha 800 while adapter_config.json says 8 (and the save record still confirms the
    JSON): peftlab loads alpha 8, as Hugging Face PEFT does, and warns that the copy disagrees."""
    from peft import PeftModel

    model = saved(tmp_path).eval()
    planted = json.dumps(peftlab.LoRA(r=4, alpha=800, targets=["0", "1"], init="random").to_dict())
    rewrite_weights(tmp_path, lambda tensors: None, {"peftlab_config": planted})
    with pytest.warns(peftlab.AdapterFileWarning, match="disagrees with .*adapter_config.json; the copy was ignored"):
        ours = peftlab.load(small_base(), tmp_path).eval()
    assert ours.configs["default"].alpha == 8
    hf = PeftModel.from_pretrained(small_base(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(X), model(X), atol=0, rtol=0)
        torch.testing.assert_close(ours(X), hf(X), atol=1e-6, rtol=0)
    assert main(["info", str(tmp_path)]) == 0
    assert "alpha: 8" in capsys.readouterr().out


def test_a_planted_config_without_the_save_record_is_not_read(tmp_path: Path) -> None:
    saved(tmp_path)
    planted = json.dumps(peftlab.LoRA(r=4, alpha=800, targets=["0", "1"]).to_dict())
    path = tmp_path / "adapter_model.safetensors"
    save_file(load_file(path), path, metadata={"format": "pt", "peftlab_config": planted})
    assert peftlab.load(small_base(), tmp_path).configs["default"].alpha == 8


def test_the_config_as_given_reads_back_exactly_when_the_json_confirms_it(tmp_path: Path) -> None:
    config = peftlab.LoRA(r=4, alpha=8, targets="all-linear", layers=None, init="gaussian")
    saved(tmp_path, config)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["0", "1"]
    assert peftlab.load(small_base(), tmp_path).configs["default"] == config


# --- bounded loads ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("changes", "message"), [
    ({"r": 10**9}, "sets r=1000000000, but no tensor in adapter_model.safetensors has a dimension above 64"),
    ({"r": 10**6}, "sets r=1000000, but no tensor"),
    ({"r": 10**40}, "sets r=10000000000000000000000000000000000000000, but no tensor"),
    ({"rank_pattern": {"1": 10**9}}, "sets rank_pattern['1']=1000000000, but no tensor"),
])
def test_absurd_sizes_are_refused_fast_within_a_few_megabytes(changes: dict, message: str, forked,
                                                              tmp_path: Path) -> None:
    """In a fresh child process, whose peak resident memory shows what the load allocated."""
    saved(tmp_path)
    edit_config(tmp_path, **changes)
    queue = forked.Queue()
    child = forked.Process(target=load_measured, args=(str(tmp_path), queue))
    child.start()
    error, seconds, grown_mb = queue.get(timeout=120)
    child.join()
    assert error.startswith("AdapterLoadError: ") and message in error, error
    assert seconds < 2.0 and grown_mb < 8, (seconds, grown_mb)


def test_a_size_derived_from_the_config_is_checked_too(tmp_path: Path) -> None:
    """A bottleneck adapter's width comes from d / reduction_factor: the width it asks for at each site is checked."""
    saved(tmp_path, peftlab.Adapter(bottleneck=8, targets=["0", "1"]))
    edit_config(tmp_path, bottleneck=None, reduction_factor=1e-9)
    with pytest.raises(peftlab.AdapterLoadError, match=r"sets bottleneck at '0' \(its 64 features // reduction_factor"
                                                       r"\)=63999999999, but no tensor in adapter_model.safetensors "
                                                       r"has a dimension above 64"):
        peftlab.load(small_base(), tmp_path)


def test_a_refused_build_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    saved(tmp_path, peftlab.Adapter(bottleneck=8, targets=["0", "1"]))
    edit_config(tmp_path, bottleneck=None, reduction_factor=1e-9)
    model = peftlab.adapt(small_base(), peftlab.LoRA(r=2, targets=["1"]))
    structure = repr(model)
    with pytest.raises(peftlab.AdapterLoadError):
        model.load_adapter(tmp_path, "other")
    assert repr(model) == structure and model.adapters == ["default"]


def test_every_integer_field_of_every_method_is_declared_a_size_or_not() -> None:
    """A load checks `size_fields` against the file before building; a new method's integer fields must be listed
    there, or here when they are not tensor sizes."""
    import dataclasses
    import typing

    not_sizes = {"seed", "layers", "projection_prng_key"}
    for method_id in peftlab.method_ids():
        cls = peftlab.get_method(method_id)
        hints = typing.get_type_hints(cls)
        integers = {f.name for f in dataclasses.fields(cls) if "int" in str(hints[f.name])}
        assert integers - not_sizes <= set(cls.size_fields), (method_id, integers - not_sizes - set(cls.size_fields))


# --- tensor kinds and values --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_tensors_are_refused_or_cast_when_asked(dtype: torch.dtype, tmp_path: Path) -> None:
    saved(tmp_path)
    key = "base_model.model.0.lora_A.weight"
    rewrite_weights(tmp_path, lambda tensors: tensors.update({key: (tensors[key] > 0).to(dtype)}))
    with pytest.raises(peftlab.AdapterLoadError, match=rf"tensor '{key}' holds (I64|BOOL) \((int|bool)\) values, but "
                                                       r"the adapter holds float values there.*allow_non_float=True"):
        peftlab.load(small_base(), tmp_path)
    with pytest.warns(peftlab.AdapterFileWarning, match="cast to float as asked"):
        model = peftlab.load(small_base(), tmp_path, allow_non_float=True)
    a = model.site_adapters("default")["0"][0].lora_A.weight
    assert a.dtype == torch.float32 and set(a.unique().tolist()) <= {0.0, 1.0}


def test_float_values_for_integer_indices_are_refused_even_when_asked(tmp_path: Path) -> None:
    saved(tmp_path, peftlab.SparseFT(targets=["0", "1"], pruning=0.5))
    key = "base_model.model.0.sparse_indices"
    rewrite_weights(tmp_path, lambda tensors: tensors.update({key: tensors[key].float()}))
    with pytest.raises(peftlab.AdapterLoadError, match=r"holds F32 \(float\) values, but the adapter holds int"):
        peftlab.load(small_base(), tmp_path, allow_non_float=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensors_are_refused_or_loaded_with_a_warning(bad: float, tmp_path: Path) -> None:
    saved(tmp_path)
    key = "base_model.model.1.lora_B.weight"

    def spoil(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key][0, 0] = bad

    rewrite_weights(tmp_path, spoil)
    with pytest.raises(peftlab.AdapterLoadError, match=f"'{key}' hold NaN or infinite values.*allow_non_finite"):
        peftlab.load(small_base(), tmp_path)
    with pytest.warns(peftlab.AdapterFileWarning, match="loaded as asked"):
        peftlab.load(small_base(), tmp_path, allow_non_finite=True)


def test_saving_nan_weights_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    model = saved(tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    with torch.no_grad():
        model.site_adapters("default")["1"][0].lora_B.weight[0, 0] = float("nan")
    for folder in (tmp_path / "old", tmp_path / "new"):
        with pytest.raises(peftlab.AdapterSaveError, match=r"holds NaN or infinite values in 'base_model.model.1."
                                                           r"lora_B.weight' \(did training diverge\?\); nothing was "
                                                           "saved.*allow_non_finite=True"):
            model.save(folder)
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
    assert not (tmp_path / "new").exists()
    with pytest.warns(peftlab.AdapterFileWarning, match="saved as asked"):
        model.save(tmp_path / "new", allow_non_finite=True)
    assert torch.isnan(load_file(tmp_path / "new" / "adapter_model.safetensors")[
        "base_model.model.1.lora_B.weight"]).any()


def test_a_hugging_face_folder_loads_without_any_peftlab_record(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    hf = get_peft_model(copy.deepcopy(tiny_llama()), LoraConfig(r=4, target_modules=["q_proj"],
                                                                init_lora_weights=False))
    hf.save_pretrained(tmp_path)
    ours = peftlab.load(tiny_llama(), tmp_path)
    assert ours.configs["default"].r == 4


def test_a_planted_copy_with_an_absurd_size_is_ignored_not_obeyed(tmp_path: Path) -> None:
    model = saved(tmp_path).eval()
    planted = json.dumps(peftlab.LoRA(r=10**9, alpha=8, targets=["0", "1"]).to_dict())
    rewrite_weights(tmp_path, lambda tensors: None, {"peftlab_config": planted})
    with pytest.warns(peftlab.AdapterFileWarning, match="the copy was ignored"):
        ours = peftlab.load(small_base(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(X), model(X), atol=0, rtol=0)
