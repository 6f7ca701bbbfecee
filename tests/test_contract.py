"""The contract every registered method meets on every tiny model (an MLP, a conv net, BERT and GPT-2 from configs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import peftlab
from peftlab.core.layer import AdaptedLayer
from tests.method_cases import NOT_APPLICABLE, case_fields
from tests.tiny_models import MODELS, TinyModel

CELLS = [(m, t) for m in peftlab.method_ids() for t in MODELS]


def _cell_id(cell: tuple[str, TinyModel]) -> str:
    return f"{cell[0]}-{cell[1].name}"


def _config(method_id: str, tiny: TinyModel, **extra: object) -> peftlab.MethodConfig:
    fields = case_fields(method_id, tiny.name)
    if isinstance(fields, tuple):
        pytest.skip(f"{method_id} on {tiny.name}: {fields[1]}")
    return peftlab.config_for(method_id, **{**fields, **extra})


def _train(model: peftlab.AdaptedModel, tiny: TinyModel, steps: int = 3, seed: int = 0) -> None:
    """A few optimiser steps so every trainable tensor moves away from its initial value."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        tiny.run(model).float().pow(2).mean().backward()
        opt.step()


@pytest.fixture(params=CELLS, ids=[_cell_id(c) for c in CELLS])
def cell(request: pytest.FixtureRequest) -> tuple[str, TinyModel]:
    return request.param


def test_not_applicable_cells_fail_loudly(cell: tuple[str, TinyModel]) -> None:
    method_id, tiny = cell
    fields = case_fields(method_id, tiny.name)
    if not isinstance(fields, tuple):
        pytest.skip("applicable")
    assert fields[0] == NOT_APPLICABLE
    with pytest.raises(peftlab.PeftlabError):
        peftlab.adapt(tiny.make(), peftlab.config_for(method_id))


def test_only_adapter_parameters_train(cell: tuple[str, TinyModel]) -> None:
    method_id, tiny = cell
    base = tiny.make()
    base_params = {id(p) for p in base.parameters()}
    model = peftlab.adapt(base, _config(method_id, tiny))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable, "the adapter has no trainable parameters"
    assert not any(id(p) in base_params for p in trainable), "a base parameter requires grad"
    tiny.run(model).float().pow(2).mean().backward()
    for name, param in model.named_parameters():
        if id(param) in base_params:
            assert param.grad is None, f"base parameter {name} got a gradient"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    in_optimizer = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert in_optimizer == model.trainable_parameters()
    assert f"trainable: {in_optimizer:,}" in model.summary()
    assert model.total_parameters() == sum(p.numel() for p in model.parameters())


def test_disabled_equals_base_exactly(cell: tuple[str, TinyModel]) -> None:
    method_id, tiny = cell
    reference = tiny.run(tiny.make())
    model = peftlab.adapt(tiny.make(), _config(method_id, tiny))
    _train(model, tiny)
    with torch.no_grad():
        adapted = tiny.run(model)
        with model.disable_adapters():
            disabled = tiny.run(model)
    assert torch.equal(disabled, reference)
    assert not torch.allclose(adapted, reference, atol=1e-6), "the trained adapter did not change the output"


def test_save_then_load_reproduces_outputs(cell: tuple[str, TinyModel], tmp_path: Path) -> None:
    method_id, tiny = cell
    model = peftlab.adapt(tiny.make(), _config(method_id, tiny))
    _train(model, tiny)
    model.eval()
    with torch.no_grad():
        expected = tiny.run(model)
    model.save(tmp_path / "adapter")
    loaded = peftlab.load(tiny.make(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(tiny.run(loaded), expected, atol=1e-6, rtol=1e-6)
    assert loaded.configs["default"] == model.configs["default"]


def test_merge_unmerge(cell: tuple[str, TinyModel]) -> None:
    method_id, tiny = cell
    model = peftlab.adapt(tiny.make(), _config(method_id, tiny))
    _train(model, tiny)
    if not type(model.configs["default"]).card.mergeable:
        with pytest.raises(peftlab.AdapterStateError, match="not mergeable"):
            model.merge_and_unload()
        return
    before = {k: v.clone() for k, v in tiny.make().state_dict().items()}
    with torch.no_grad():
        unmerged = tiny.run(model)
        model.merge_adapter()
        torch.testing.assert_close(tiny.run(model), unmerged, atol=1e-5, rtol=1e-5)
        model.unmerge()
        torch.testing.assert_close(tiny.run(model), unmerged, atol=1e-6, rtol=1e-6)
    restored = model.unload().state_dict()
    for key, value in before.items():
        torch.testing.assert_close(restored[key], value, atol=1e-6, rtol=0)


def test_merge_and_unload_gives_plain_model(cell: tuple[str, TinyModel]) -> None:
    method_id, tiny = cell
    model = peftlab.adapt(tiny.make(), _config(method_id, tiny))
    if not type(model.configs["default"]).card.mergeable:
        pytest.skip("not mergeable (checked in test_merge_unmerge)")
    _train(model, tiny)
    with torch.no_grad():
        expected = tiny.run(model)
        plain = model.merge_and_unload()
        assert not any(isinstance(m, AdaptedLayer) for m in plain.modules())
        assert type(plain) is type(tiny.make())
        torch.testing.assert_close(tiny.run(plain), expected, atol=1e-5, rtol=1e-5)


def test_two_adapters_coexist_and_switch(cell: tuple[str, TinyModel]) -> None:
    method_id, tiny = cell
    model = peftlab.adapt(tiny.make(), _config(method_id, tiny))
    _train(model, tiny, seed=0)
    with torch.no_grad():
        first = tiny.run(model)
    model.add_adapter("second", _config(method_id, tiny))
    assert model.active_adapters == ("default",)
    model.set_adapter("second")
    assert all(not p.requires_grad for p in model.adapter("default").parameters())
    _train(model, tiny, steps=2, seed=1)
    with torch.no_grad():
        second = tiny.run(model)
        model.set_adapter("default")
        torch.testing.assert_close(tiny.run(model), first, atol=0, rtol=0)
    assert not torch.allclose(first, second, atol=1e-6)
    model.delete_adapter("second")
    assert model.adapters == ["default"]
    with torch.no_grad():
        torch.testing.assert_close(tiny.run(model), first, atol=0, rtol=0)




def test_merge_into_tied_weights_is_refused() -> None:
    from tests.tiny_models import tiny_gpt2

    torch.manual_seed(0)
    model = peftlab.adapt(tiny_gpt2(), peftlab.LoRA(targets=["wte"], init="random"))
    with pytest.raises(peftlab.AdapterStateError, match="tied to 'lm_head'"):
        model.merge_adapter()
    assert model.merged_adapters == []
