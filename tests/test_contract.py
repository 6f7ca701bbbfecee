"""The contract every registered method meets on every tiny model (an MLP, a conv net, BERT and GPT-2 from configs).

Each check is a function of (a config factory, a tiny model), so that a method registered anywhere (a plug-in, or the
throwaway method of tests/test_adding_a_method.py) runs the same matrix through `run_contract`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import peftlab
from peftlab.core.layer import AdaptedLayer
from tests.method_cases import NOT_APPLICABLE, case_fields
from tests.tiny_models import MODELS, TinyModel

MakeConfig = Callable[[], peftlab.MethodConfig]


def _train(model: peftlab.AdaptedModel, tiny: TinyModel, steps: int = 3, seed: int = 0) -> None:
    """A few optimiser steps so every trainable tensor moves away from its initial value."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        (tiny.run(model).float().pow(2).mean() + model.regularization_loss()).backward()
        opt.step()


def check_only_adapter_parameters_train(make: MakeConfig, tiny: TinyModel, tmp_path: Path) -> None:
    base = tiny.make()
    base_params = {id(p) for p in base.parameters()}
    model = peftlab.adapt(base, make())
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


def check_disabled_equals_base_exactly(make: MakeConfig, tiny: TinyModel, tmp_path: Path) -> None:
    reference = tiny.run(tiny.make())
    model = peftlab.adapt(tiny.make(), make())
    _train(model, tiny)
    with torch.no_grad():
        adapted = tiny.run(model)
        with model.disable_adapters():
            disabled = tiny.run(model)
    assert torch.equal(disabled, reference)
    assert not torch.allclose(adapted, reference, atol=1e-6), "the trained adapter did not change the output"


def check_save_then_load_reproduces_outputs(make: MakeConfig, tiny: TinyModel, tmp_path: Path) -> None:
    model = peftlab.adapt(tiny.make(), make())
    _train(model, tiny)
    model.eval()
    with torch.no_grad():
        expected = tiny.run(model)
    model.save(tmp_path / "adapter")
    loaded = peftlab.load(tiny.make(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(tiny.run(loaded), expected, atol=1e-6, rtol=1e-6)
    assert loaded.configs["default"] == model.configs["default"]


def check_merge_unmerge(make: MakeConfig, tiny: TinyModel, tmp_path: Path) -> None:
    model = peftlab.adapt(tiny.make(), make())
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


def check_merge_and_unload_gives_plain_model(make: MakeConfig, tiny: TinyModel, tmp_path: Path) -> None:
    model = peftlab.adapt(tiny.make(), make())
    if not type(model.configs["default"]).card.mergeable:
        return  # not mergeable: check_merge_unmerge checks the refusal
    _train(model, tiny)
    with torch.no_grad():
        expected = tiny.run(model)
        plain = model.merge_and_unload()
        assert not any(isinstance(m, AdaptedLayer) for m in plain.modules())
        assert type(plain) is type(tiny.make())
        torch.testing.assert_close(tiny.run(plain), expected, atol=1e-5, rtol=1e-5)


def check_two_adapters_coexist_and_switch(make: MakeConfig, tiny: TinyModel, tmp_path: Path) -> None:
    model = peftlab.adapt(tiny.make(), make())
    _train(model, tiny, seed=0)
    with torch.no_grad():
        first = tiny.run(model)
    model.add_adapter("second", make())
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


CHECKS = [check_only_adapter_parameters_train, check_disabled_equals_base_exactly,
          check_save_then_load_reproduces_outputs, check_merge_unmerge, check_merge_and_unload_gives_plain_model,
          check_two_adapters_coexist_and_switch]


def run_contract(method_id: str, fields_for: Callable[[str], Any], tmp_path: Path) -> None:
    """Every check on every tiny model for `method_id`; `fields_for(model name)` gives the config fields or
    (NOT_APPLICABLE, reason), in which case adapting must fail with a peftlab error."""
    for tiny in MODELS:
        fields = fields_for(tiny.name)
        if isinstance(fields, tuple):
            with pytest.raises(peftlab.PeftlabError):
                peftlab.adapt(tiny.make(), peftlab.config_for(method_id))
            continue
        for check in CHECKS:
            check(lambda f=fields: peftlab.config_for(method_id, **f), tiny, tmp_path / tiny.name / check.__name__)


CELLS = [(m, t, c) for m in peftlab.method_ids() for t in MODELS for c in CHECKS]


@pytest.mark.parametrize(("method_id", "tiny", "check"), CELLS,
                         ids=[f"{m}-{t.name}-{c.__name__.removeprefix('check_')}" for m, t, c in CELLS])
def test_contract(method_id: str, tiny: TinyModel, check: Callable[..., None], tmp_path: Path) -> None:
    fields = case_fields(method_id, tiny.name)
    if isinstance(fields, tuple):
        assert fields[0] == NOT_APPLICABLE
        with pytest.raises(peftlab.PeftlabError):
            peftlab.adapt(tiny.make(), peftlab.config_for(method_id))
        return
    check(lambda: peftlab.config_for(method_id, **fields), tiny, tmp_path)


def test_merge_into_tied_weights_is_refused() -> None:
    from tests.tiny_models import tiny_gpt2

    torch.manual_seed(0)
    model = peftlab.adapt(tiny_gpt2(), peftlab.LoRA(targets=["wte"], init="random"))
    with pytest.raises(peftlab.AdapterStateError, match="tied to 'lm_head'"):
        model.merge_adapter()
    assert model.merged_adapters == []
