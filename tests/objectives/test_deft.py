"""DEFT: the density loss equals its equation on activations captured by hand, reaches only the adapter's
parameters, and lowers the measured activation density."""

from __future__ import annotations

import pytest
import torch

import peftlab
from peftlab.objectives import DEFT, activation_density
from tests.tiny_models import tiny_bert, tiny_llama


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": torch.randint(2, 100, (2, 6), generator=g), "attention_mask": mask}


def test_the_loss_is_the_equation_on_the_real_tokens() -> None:
    """λ · (1/L) Σ_ℓ mean over real tokens and units of tanh(β · max(a − τ, 0)²), for captured activations a."""
    torch.manual_seed(0)
    model = peftlab.adapt(tiny_llama(), peftlab.LoRA(r=2, targets="all-linear", init="random"))
    model.add_objective("deft", DEFT(weight=0.5, sharpness=2.0, threshold=0.05))
    captured: list[torch.Tensor] = []
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
             for layer in model.get_base_model().model.layers]
    batch = _batch()
    model(**batch)
    for hook in hooks:
        hook.remove()
    real = batch["attention_mask"].bool()
    expected = sum(torch.tanh(2.0 * (a - 0.05).clamp(min=0) ** 2)[real].mean() for a in captured) / len(captured)
    torch.testing.assert_close(model.regularization_loss(), 0.5 * expected, atol=1e-6, rtol=1e-6)


def test_without_gradients_nothing_is_collected_and_detached_objectives_are_gone() -> None:
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA(r=2))
    model.add_objective("deft", DEFT())
    with torch.no_grad():
        model(**_batch())
    assert model.regularization_loss().item() == 0.0
    model.remove_objective("deft")
    model(**_batch())
    assert model.regularization_loss().item() == 0.0
    with pytest.raises(peftlab.AdapterStateError, match="no objective named 'deft'"):
        model.remove_objective("deft")


def test_training_with_deft_lowers_the_activation_density() -> None:
    def train(weight: float) -> float:
        torch.manual_seed(0)
        model = peftlab.adapt(tiny_bert(), peftlab.LoRA(r=4, targets="all-linear", init="random"))
        if weight:
            model.add_objective("deft", DEFT(weight=weight))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
        batch = {**_batch(), "labels": torch.tensor([0, 1])}
        for _ in range(15):
            optimizer.zero_grad()
            (model(**batch).loss + model.regularization_loss()).backward()
            optimizer.step()
        return activation_density(model.eval(), [_batch()])

    plain, sparse = train(0.0), train(5.0)
    assert 0.0 < sparse < plain - 0.05, (plain, sparse)


def test_the_objective_follows_modules_wrapped_after_it_was_attached() -> None:
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA(r=2))
    model.add_objective("deft", DEFT(weight=1.0))
    model.add_adapter("ffn", peftlab.LoRA(r=2, targets=["output.dense"]))  # wraps the observed modules
    model(**_batch())
    assert model.regularization_loss().item() > 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(peftlab.ConfigError, match="sharpness > 0"):
        DEFT(sharpness=0.0)
    model = peftlab.adapt(torch.nn.Sequential(torch.nn.Linear(2, 2)), peftlab.LoRA(targets=["0"]))
    with pytest.raises(peftlab.TargetError, match="no feed-forward output projection"):
        model.add_objective("deft", DEFT())
