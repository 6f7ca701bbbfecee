"""The fused LoRA kernel against the readable path and the equation (values and gradients)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import peftlab
from peftlab.kernels.dropout_mask import DropoutMask
from peftlab.kernels.lora_linear import LoRALinearFunction, lora_linear


def _grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.pow(2).sum().backward()
    return out.detach(), [x.grad] + [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("bias", [True, False])
def test_fused_matches_readable_path(bias: bool) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(24, 40, bias=bias), nn.Tanh(), nn.Linear(40, 8, bias=bias))
    model = peftlab.adapt(base, peftlab.LoRA(r=4, alpha=8, targets=["0", "2"], init="random"))
    _assert_fused_equals_readable(model, torch.randn(3, 5, 24))


def _assert_fused_equals_readable(model: peftlab.AdaptedModel, x: torch.Tensor) -> None:
    """Outputs and every gradient (input and adapter tensors) agree between the fused kernel and the readable path."""
    sites = [site for site, _ in model.site_adapters("default").values()]
    results = []
    for fused in (True, False):
        for site in sites:
            site.fused = fused
        for p in model.parameters():
            p.grad = None
        results.append(_grads(model, x))
    (out_f, grads_f), (out_p, grads_p) = results
    torch.testing.assert_close(out_f, out_p, atol=1e-5, rtol=1e-5)
    for g_f, g_p in zip(grads_f, grads_p, strict=True):
        torch.testing.assert_close(g_f, g_p, atol=1e-5, rtol=1e-5)


def test_fused_dropout_is_the_equation() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 10, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(7, 10, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    a = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    bb = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 6, 10) > 0.25
    fused = lora_linear(x, w, b, a, bb, 0.5, 0.25, training=True, mask=mask)
    reference = x @ w.T + b + 0.5 * ((x * mask / 0.75) @ a.T) @ bb.T
    torch.testing.assert_close(fused, reference)
    assert torch.autograd.gradcheck(
        lambda x_, a_, b_: LoRALinearFunction.apply(x_, w, b, a_, b_, 0.5, DropoutMask.from_kept(mask, 0.25)),
        (x, a, bb))


def test_fused_dropout_draws_a_fresh_mask_in_training_only() -> None:
    torch.manual_seed(0)
    model = peftlab.adapt(nn.Sequential(nn.Linear(16, 16)), peftlab.LoRA(targets=["0"], dropout=0.5, init="random"))
    x = torch.randn(4, 16)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_fused_dora_matches_readable_path() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 8, bias=False))
    model = peftlab.adapt(base, peftlab.DoRA(r=4, alpha=8, targets=["0", "2"], init="random"))
    with torch.no_grad():  # a magnitude away from its initial norm, so every term of the gradient is exercised
        for site, _ in model.site_adapters("default").values():
            site.lora_magnitude_vector.mul_(1.3)
    _assert_fused_equals_readable(model, torch.randn(3, 5, 24))


def test_fused_dora_dropout_is_the_equation() -> None:
    from peftlab.kernels.dora_linear import DoRALinearFunction

    torch.manual_seed(0)
    f64 = {"dtype": torch.float64}
    x = torch.randn(2, 5, 10, **f64, requires_grad=True)
    w, b = torch.randn(7, 10, **f64), torch.randn(7, **f64)
    a = torch.randn(3, 10, **f64, requires_grad=True)
    bb = torch.randn(7, 3, **f64, requires_grad=True)
    m = torch.rand(7, **f64).add_(0.5).requires_grad_(True)
    mask = torch.rand(2, 5, 10) > 0.3
    fused = DoRALinearFunction.apply(x, w, b, a, bb, m, 0.5, DropoutMask.from_kept(mask, 0.3))
    dropped = x * mask / 0.7
    s = m / torch.linalg.vector_norm(w + 0.5 * bb @ a, dim=1).detach()
    reference = x @ w.T + b + (s - 1) * (dropped @ w.T) + s * (0.5 * (dropped @ a.T) @ bb.T)  # HF PEFT's definition
    torch.testing.assert_close(fused, reference)
    # Gradients against autograd through the equation (the norm is a constant in both, as DoRA prescribes).
    upstream = torch.randn_like(reference)
    expected = torch.autograd.grad(reference, (x, a, bb, m), upstream)
    got = torch.autograd.grad(fused, (x, a, bb, m), upstream)
    for g_got, g_expected in zip(got, expected, strict=True):
        torch.testing.assert_close(g_got, g_expected)


def _seeded_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`_grads` of one training step from zeroed gradients, with the same dropout mask draw at every call."""
    model.train()
    model.zero_grad()
    torch.manual_seed(7)
    return _grads(model, x)


def test_dora_dropout_path_follows_a_rewritten_base_weight() -> None:
    """Rewriting the frozen base weight, even through `.data` (which bumps no version counter), must reach DoRA's
    sparse dropout products at once: nothing derived from W may outlive a step. The rewritten model matches a model
    adapted from the new weights, in outputs and in input and adapter gradients."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(48, 40), nn.Tanh(), nn.Linear(40, 24))
    config = peftlab.DoRA(targets=["0", "2"], r=4, dropout=0.1, init="random")
    rewritten = peftlab.adapt(copy.deepcopy(base), config)
    x = torch.randn(16, 48)
    _seeded_grads(rewritten, x)  # a step on the old weights first
    base.load_state_dict({name: torch.randn_like(p) for name, p in base.state_dict().items()})
    reference = peftlab.adapt(base, config)
    with torch.no_grad():
        trained = dict(rewritten.named_parameters())
        for name, p in reference.named_parameters():
            if p.requires_grad:
                p.copy_(trained[name])  # the same adapter parameters
            else:
                trained[name].data.copy_(p)  # the new base weights, written into the first model
    got, expected = _seeded_grads(rewritten, x), _seeded_grads(reference, x)
    torch.testing.assert_close(got[0], expected[0])
    for g, e in zip(got[1], expected[1], strict=True):
        torch.testing.assert_close(g, e)
