"""Prompt tuning, prefix tuning and LoReFT on the real MiniLM encoder and real tweets: a few steps lower the loss.

Only the method's own tensors train (modules_to_save=()): the new 3-way head stays frozen, so the fall in loss is the
method's doing. A fresh head is initialised near zero (std 0.02), which would starve everything below it of gradient;
we scale it ×25 once, making it a fixed random read-out. Losses are measured in eval mode (no dropout) before and after.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

import peftlab
from tests.real_assets import minilm_classifier_and_batch, minilm_path, train_losses

D, LAYERS = 384, 6


@pytest.fixture(scope="module")
def minilm() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    base, batch = minilm_classifier_and_batch()
    with torch.no_grad():
        base.classifier.weight.mul_(25)
    return base, {k: v[::3] for k, v in batch.items()}  # 8 tweets: 3 negative, 3 neutral, 2 positive


def _eval_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


CASES: list[tuple[str, Callable[[], peftlab.MethodConfig], float, int]] = [
    ("prompt-text-init", lambda: peftlab.PromptTuning(
        num_virtual_tokens=8, init="text", init_text="Is this tweet negative, neutral or positive?",
        tokenizer_path=minilm_path(), modules_to_save=()), 3e-2, 8 * D),
    ("prefix", lambda: peftlab.PrefixTuning(num_virtual_tokens=8, modules_to_save=()), 3e-2, 8 * 2 * LAYERS * D),
    ("loreft", lambda: peftlab.LoReFT(r=4, positions="f1+l1", modules_to_save=()), 1e-2, LAYERS * (2 * 4 * D + 4)),
]


@pytest.mark.parametrize("name, make, lr, count", CASES, ids=[c[0] for c in CASES])
def test_method_alone_lowers_the_loss(minilm: Any, name: str, make: Callable[[], peftlab.MethodConfig], lr: float,
                                      count: int) -> None:
    base, batch = minilm
    torch.manual_seed(0)
    model = peftlab.adapt(copy.deepcopy(base), make())
    assert model.trainable_parameters() == count
    before = _eval_loss(model, batch)
    train_losses(model, batch, steps=5, lr=lr)
    after = _eval_loss(model, batch)
    assert after < 0.9 * before, (before, after)
