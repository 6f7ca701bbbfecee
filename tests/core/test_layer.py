"""Merging and unmerging: `unmerge()` restores the base weights within the stated bound per cycle (docs/api.md),
`merge_adapter(exact_unmerge=True)` restores them bit for bit, and disabling unmerged adapters is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import peftlab
from peftlab.methods.dora import DoRALinear

CONFIGS = {
    "lora": lambda: peftlab.LoRA(r=8, alpha=16, targets=["0", "1"], init="random", bias="all"),
    "dora": lambda: peftlab.DoRA(r=8, alpha=16, targets=["0", "1"], init="random"),
    "ia3": lambda: peftlab.IA3(targets=["0", "1"], feedforward=["1"]),
    "sparse": lambda: peftlab.SparseFT(targets=["0", "1"], pruning=0.5),
    "bitfit": lambda: peftlab.BitFit(),
}


def trained(method: str, dtype: torch.dtype) -> tuple[peftlab.AdaptedModel, nn.Module]:
    """An adapter with random, non-trivial values (as after training) on a 2-layer base of `dtype`, and an untouched
    copy of that base."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 128)).to(dtype)
    pristine = copy.deepcopy(base)
    model = peftlab.adapt(base, CONFIGS[method]())
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.3)
    return model, pristine


def base_tensors(model: peftlab.AdaptedModel) -> dict[str, torch.Tensor]:
    return {f"{path}.{k}": v.detach().clone() for path, (_, module) in model.site_adapters("default").items()
            for k, v in module.state_dict().items()}


def directions(model: peftlab.AdaptedModel) -> dict[str, torch.Tensor]:
    """w + Δw for each base value: the merged value, except DoRA's, taken before its magnitude rescale."""
    before = base_tensors(model)
    model.merge_adapter()
    merged = base_tensors(model)
    model.unmerge()
    for path, (site, module) in model.site_adapters("default").items():
        if isinstance(site, DoRALinear):
            merged[f"{path}.weight"] = before[f"{path}.weight"] + site.delta_weight().to(module.weight.dtype)
    return merged


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_one_merge_unmerge_cycle_stays_within_the_stated_bound(method: str, dtype: torch.dtype) -> None:
    """|w_after − w| ≤ 2·eps·(|w| + |w + Δw|) for every base value (eps: the dtype's machine epsilon)."""
    model, _ = trained(method, dtype)
    before = base_tensors(model)
    towards = directions(model)  # one cycle already
    after = base_tensors(model)
    eps = torch.finfo(dtype).eps
    for key, value in before.items():
        w, w_after, w_merged = value.double(), after[key].double(), towards[key].double()
        bound = 2 * eps * (w.abs() + w_merged.abs())
        assert ((w_after - w).abs() <= bound).all(), (key, ((w_after - w).abs() - bound).max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_exact_unmerge_restores_every_bit_over_many_cycles(method: str, dtype: torch.dtype) -> None:
    model, pristine = trained(method, dtype)
    before = base_tensors(model)
    x = torch.randn(4, 128).to(dtype)
    with torch.no_grad():
        adapted = model(x)
        for _ in range(50):
            model.merge_adapter(exact_unmerge=True)
            model.unmerge()
        after = base_tensors(model)
        assert all(torch.equal(after[k], v) for k, v in before.items())
        assert torch.equal(model(x), adapted)
        with model.disable_adapters():
            assert torch.equal(model(x), pristine(x))


def test_dora_in_bf16_drifts_over_cycles_without_the_exact_option() -> None:
    """What the option is for (the reason the bound is stated per cycle): 50 plain cycles move DoRA's bf16 weights."""
    model, _ = trained("dora", torch.bfloat16)
    before = base_tensors(model)
    for _ in range(50):
        model.merge_adapter()
        model.unmerge()
    after = base_tensors(model)
    assert any(not torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("method", list(CONFIGS))
def test_disabling_unmerged_adapters_gives_the_base_bit_for_bit(method: str) -> None:
    model, pristine = trained(method, torch.bfloat16)
    x = torch.randn(4, 128).to(torch.bfloat16)
    with torch.no_grad(), model.disable_adapters():
        assert torch.equal(model(x), pristine(x))
