"""VeRA and KaSA exchanged with Hugging Face PEFT, both ways, on BERT and a Llama-shaped model built from configs:
the same outputs (within 1e-5), the same merged weights, and KaSA's regulariser equal to HF PEFT's _get_kasa_loss."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import peftlab
from tests.test_hf_interop_lora import BERT, LLAMA, _base, _file_tensors, _perturb, _same_model
from tests.tiny_models import TinyModel

pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, VeraConfig, get_peft_model
from peft.tuners.lora import KasaConfig


@dataclass(frozen=True)
class Case:
    id: str
    tiny: TinyModel
    hf: Callable[[], Any]
    ours: Callable[[], peftlab.MethodConfig]


QV, LLAMA_QV = ["query", "value"], ["q_proj", "v_proj"]
CASES = [
    Case("vera-bert", BERT, lambda: VeraConfig(r=8, target_modules=QV, d_initial=0.2),
         lambda: peftlab.VeRA(r=8, targets=QV, d_initial=0.2, modules_to_save=[])),
    Case("vera-llama-no-projection", LLAMA,
         lambda: VeraConfig(r=6, target_modules=[*LLAMA_QV, "down_proj"], projection_prng_key=7,
                            save_projection=False),
         lambda: peftlab.VeRA(r=6, targets=[*LLAMA_QV, "down_proj"], projection_prng_key=7, save_projection=False)),
    Case("kasa-bert", BERT, lambda: LoraConfig(r=4, lora_alpha=8, target_modules=QV, kasa_config=KasaConfig()),
         lambda: peftlab.KaSA(r=4, alpha=8, targets=QV, modules_to_save=[])),
    Case("kasa-llama-rslora", LLAMA,
         lambda: LoraConfig(r=4, lora_alpha=6, target_modules=[*LLAMA_QV, "up_proj"], use_rslora=True,
                            kasa_config=KasaConfig(beta=0.01, gamma=0.02)),
         lambda: peftlab.KaSA(r=4, alpha=6, targets=[*LLAMA_QV, "up_proj"], use_rslora=True, beta=0.01, gamma=0.02)),
]


def _hf_base_output(tiny: TinyModel, base: nn.Module) -> torch.Tensor:
    from tests.test_hf_interop_lora import _outputs

    with torch.no_grad():
        return _outputs(tiny, base.eval())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hf_saved_adapter_loads_in_peftlab(case: Case, tmp_path: Path) -> None:
    base = _base(case.tiny)
    base_out = _hf_base_output(case.tiny, copy.deepcopy(base))
    hf = get_peft_model(copy.deepcopy(base), case.hf())
    _perturb(hf)
    hf.save_pretrained(tmp_path / "hf")
    ours = peftlab.load(copy.deepcopy(base), tmp_path / "hf")
    assert ours.configs["default"] == case.ours() or type(ours.configs["default"]) is type(case.ours())
    ours.save(tmp_path / "again")
    written, rewritten = _file_tensors(tmp_path / "hf"), _file_tensors(tmp_path / "again")
    assert sorted(rewritten) == sorted(written)
    for key, value in written.items():
        torch.testing.assert_close(rewritten[key], value, atol=0, rtol=0)
    _same_model(hf, ours, case.tiny, base_out)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_peftlab_saved_adapter_loads_in_hf(case: Case, tmp_path: Path) -> None:
    base = _base(case.tiny)
    base_out = _hf_base_output(case.tiny, copy.deepcopy(base))
    ours = peftlab.adapt(copy.deepcopy(base), case.ours())
    _perturb(ours)
    ours.save(tmp_path / "ours")
    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    _same_model(hf, ours, case.tiny, base_out)


@pytest.mark.parametrize("case", [c for c in CASES if c.id.startswith("kasa")], ids=lambda c: c.id)
def test_kasa_regulariser_equals_hf(case: Case) -> None:
    base = _base(case.tiny)
    hf = get_peft_model(copy.deepcopy(base), case.hf())
    _perturb(hf)
    ours = peftlab.adapt(copy.deepcopy(base), case.ours())
    hf_params = dict(hf.named_parameters())
    with torch.no_grad():  # the same trained tensors on both sides
        for path, entry in ours.adapter("default").sites.items():
            prefix = f"base_model.model.{path}."
            entry.site.lora_A.weight.copy_(hf_params[prefix + "lora_A.default.weight"])
            entry.site.lora_B.weight.copy_(hf_params[prefix + "lora_B.default.weight"])
            entry.site.lora_diag.copy_(hf_params[prefix + "lora_diag.default"])
    expected = hf.base_model._get_kasa_loss()
    torch.testing.assert_close(ours.regularization_loss(), expected.float(), atol=1e-6, rtol=1e-6)


def test_kasa_regulariser_on_a_hand_computed_example() -> None:
    """β ‖ΔΣ‖² + γ (‖BᵀB − I‖_F + ‖A Aᵀ − I‖_F) for one 3x3 layer, r = 1: A = [[1, 2, 2]] / 3 (a unit row: its Gram
    term is 0), B = [[0], [0], [2]] (BᵀB = 4: the term is 3), ΔΣ = [0.5]: β / 4 + 3 γ."""
    base = nn.Sequential(nn.Linear(3, 3))
    model = peftlab.adapt(base, peftlab.KaSA(r=1, targets=["0"], beta=0.2, gamma=0.1))
    site = model.adapter("default").sites["0"].site
    with torch.no_grad():
        site.lora_A.weight.copy_(torch.tensor([[1.0, 2.0, 2.0]]) / 3)
        site.lora_B.weight.copy_(torch.tensor([[0.0], [0.0], [2.0]]))
        site.lora_diag.copy_(torch.tensor([0.5]))
    assert model.regularization_loss().item() == pytest.approx(0.2 * 0.25 + 0.1 * 3.0, abs=1e-6)


def test_kasa_drops_the_smallest_singular_directions_and_disabling_restores_the_base() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    weight = layer.weight.detach().clone()
    model = peftlab.adapt(nn.Sequential(layer), peftlab.KaSA(r=2, targets=["0"]))  # B = 0: only the truncation acts
    x = torch.randn(4, 6)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    truncated = (u[:, :3] * s[:3]) @ vh[:3]  # the 5 - 2 = 3 largest directions
    with torch.no_grad():
        torch.testing.assert_close(model(x), x @ truncated.T + layer.bias, atol=1e-5, rtol=0)
        with model.disable_adapters():
            assert torch.equal(model(x), nn.functional.linear(x, weight, layer.bias))
        model.merge_adapter()
        torch.testing.assert_close(model.get_base_model()[0].base_layer.weight, truncated, atol=1e-5, rtol=0)
        model.unmerge()
    torch.testing.assert_close(model.get_base_model()[0].base_layer.weight, weight, atol=1e-6, rtol=0)


def test_vera_projections_are_hf_peft_s_for_the_same_key() -> None:
    base = _base(BERT)
    hf = get_peft_model(copy.deepcopy(base), VeraConfig(r=8, target_modules=QV, projection_prng_key=3))
    ours = peftlab.adapt(copy.deepcopy(base), peftlab.VeRA(r=8, targets=QV, projection_prng_key=3))
    shared = ours.adapter("default").model_adapter
    assert torch.equal(shared.vera_A, hf.base_model.vera_A["default"])
    assert torch.equal(shared.vera_B, hf.base_model.vera_B["default"])
    sites = ours.adapter("default").entries(peftlab.SiteRole.METHOD)
    params = sum(p.numel() for entry in sites for p in entry.site.parameters())
    assert params == 4 * (8 + 32)  # r + d_out per layer, 4 layers
