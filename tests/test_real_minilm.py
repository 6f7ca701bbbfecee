"""LoRA on the real MiniLM encoder, on real tweets: it trains, the loss falls, and the file round-trips."""

from __future__ import annotations

from pathlib import Path

import torch

import peftlab
from tests.real_assets import minilm_classifier_and_batch, train_losses


def test_lora_on_attention_trains_minilm(tmp_path: Path) -> None:
    base, batch = minilm_classifier_and_batch()
    model = peftlab.adapt(base, peftlab.LoRA(r=8, alpha=16, targets=["query", "value"]))
    assert "LoRA at 12 site(s)" in model.summary()
    trainable = model.trainable_parameters()
    assert trainable == 12 * 8 * (384 + 384) + 3 * 384 + 3  # LoRA A,B on 6 layers x {query, value} + the new head
    losses = train_losses(model, batch, steps=25, lr=3e-3)
    assert min(losses[-5:]) < 0.6 * losses[0], losses
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save(tmp_path / "adapter")
    size = sum(p.stat().st_size for p in (tmp_path / "adapter").iterdir())
    assert size < 4 * trainable + 20_000, "the adapter file should hold adapter tensors (float32) and config only"
    fresh, _ = minilm_classifier_and_batch()
    loaded = peftlab.load(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=1e-5)
