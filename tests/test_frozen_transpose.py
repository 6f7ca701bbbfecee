"""The kept transposes of frozen weights (kernels/frozen_transpose.py): made once, remade whenever the weight
changes, freed with it; DoRA's CPU dropout path gives the same results after its base weight is rewritten."""

from __future__ import annotations

import copy
import gc

import torch
from torch import nn

import peftlab
from peftlab.kernels import frozen_transpose as module
from peftlab.kernels.frozen_transpose import frozen_transpose


def test_the_copy_is_made_once_and_equals_the_transpose() -> None:
    weight = nn.Parameter(torch.randn(5, 3), requires_grad=False)
    first = frozen_transpose(weight)
    assert first.shape == (3, 5) and first.is_contiguous()
    torch.testing.assert_close(first, weight.T, rtol=0, atol=0)
    assert frozen_transpose(weight) is first


def test_an_in_place_write_or_new_storage_remakes_the_copy() -> None:
    weight = nn.Parameter(torch.randn(4, 6), requires_grad=False)
    stale = frozen_transpose(weight)
    with torch.no_grad():
        weight.mul_(2.0)  # e.g. merging an adapter into the weight
    fresh = frozen_transpose(weight)
    assert fresh is not stale
    torch.testing.assert_close(fresh, weight.T, rtol=0, atol=0)
    weight.data = torch.randn(4, 6)  # what Module.to() does: new storage, same Parameter
    torch.testing.assert_close(frozen_transpose(weight), weight.T, rtol=0, atol=0)


def test_the_copy_is_freed_with_its_weight_and_by_release() -> None:
    module.release()
    weight = torch.randn(8, 8)
    frozen_transpose(weight)
    assert len(module._COPIES) == 1
    del weight
    gc.collect()
    assert len(module._COPIES) == 0
    kept = torch.randn(2, 2)
    frozen_transpose(kept)
    module.release()
    assert len(module._COPIES) == 0


def test_a_copy_made_under_inference_mode_is_remade_for_training() -> None:
    weight = torch.randn(3, 4)
    with torch.inference_mode():
        inside = frozen_transpose(weight)
    assert inside.is_inference()
    outside = frozen_transpose(weight)
    assert not outside.is_inference()
    torch.testing.assert_close(outside, weight.T, rtol=0, atol=0)


def _dora_step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and adapter gradients of one training forward/backward with a fixed dropout mask draw."""
    model.train()
    model.zero_grad()
    torch.manual_seed(7)  # the same dropout mask for every call
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_dora_dropout_path_follows_a_rewritten_base_weight() -> None:
    """Rewriting the frozen base weight in place (load_state_dict, merging) must not leave DoRA's sparse products on
    a stale transpose: the rewritten model matches a model adapted from the new weights."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(48, 40), nn.Tanh(), nn.Linear(40, 24))
    config = peftlab.DoRA(targets=["0", "2"], r=4, dropout=0.1, init="random")
    rewritten = peftlab.adapt(copy.deepcopy(base), config)
    x = torch.randn(16, 48)
    _dora_step(rewritten, x)  # the transposes of the old weights are made here
    base.load_state_dict({name: torch.randn_like(p) for name, p in base.state_dict().items()})
    reference = peftlab.adapt(base, config)
    with torch.no_grad():
        trained = dict(rewritten.named_parameters())
        for name, p in reference.named_parameters():
            if p.requires_grad:
                p.copy_(trained[name])  # the same adapter parameters
            else:
                trained[name].copy_(p)  # the new base weights, written in place into the first model
    got, expected = _dora_step(rewritten, x), _dora_step(reference, x)
    torch.testing.assert_close(got[0], expected[0])
    for g, e in zip(got[1], expected[1], strict=True):
        torch.testing.assert_close(g, e)
