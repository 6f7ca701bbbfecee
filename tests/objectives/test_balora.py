"""BA-LoRA's three regularisers: each equals its equation on hand-checked tensors, the consistency term compares
with the frozen model on the same inputs, and training with them runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import peftlab
from peftlab.objectives import BALoRA
from peftlab.objectives.balora import consistency, diversity, svd_share
from tests.tiny_models import tiny_bert, tiny_llama


def test_the_terms_on_hand_computed_tensors() -> None:
    f = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    g = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    # normalised rows: (0.6, 0.8) vs (0.8, 0.6): 0.08; (1, 0) vs (0, 1): 2 -> mean 1.04
    assert consistency(f, g).item() == pytest.approx(1.04)
    rows = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]])  # Cov: [[1, -1], [-1, 4]] -> off-diagonal 2·1 / h=2
    assert diversity(rows).item() == pytest.approx(1.0)
    sigma = torch.linalg.svdvals(rows)
    assert svd_share(rows, 1).item() == pytest.approx(-(sigma[0] / sigma.sum()).item())
    logits_f, logits_g = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    p = F.softmax(logits_g[mask.bool()], -1)
    expected = (p * (p.log() - F.log_softmax(logits_f[mask.bool()], -1))).sum(-1).mean()
    torch.testing.assert_close(consistency(logits_f, logits_g, mask), expected)


def test_the_objective_compares_with_the_frozen_model_on_the_same_batch() -> None:
    torch.manual_seed(0)
    model = peftlab.adapt(tiny_bert().eval(), peftlab.LoRA(r=2, init="random"))  # eval: no dropout to compare
    model.add_objective("balora", BALoRA(consistency=1.0, diversity=0.0, svd=0.0))
    batch = {"input_ids": torch.randint(2, 100, (4, 6)), "labels": torch.tensor([0, 1, 2, 0])}
    out = model(**batch)
    with torch.no_grad(), model.disable_adapters():
        frozen = model(**batch).logits
    torch.testing.assert_close(model.regularization_loss(), consistency(out.logits, frozen).float())


def test_training_a_causal_lm_with_all_three_terms() -> None:
    torch.manual_seed(0)
    model = peftlab.adapt(tiny_llama(), peftlab.LoRA(r=4, targets="all-linear"))
    model.add_objective("balora", BALoRA())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(2, 100, (3, 8))
    for _ in range(3):
        optimizer.zero_grad()
        out = model(input_ids=ids, labels=ids)
        regular = model.regularization_loss()
        assert regular.requires_grad and torch.isfinite(regular)
        (out.loss + regular).backward()
        optimizer.step()
    model.add_adapter("prompt", peftlab.PromptTuning(num_virtual_tokens=2))
    model.set_adapter("prompt")
    with pytest.raises(peftlab.AdapterStateError, match="input-side adapter"):
        model(input_ids=ids, labels=ids)
