"""(IA)³, bottleneck adapters, sparse fine-tuning, BitFit and full fine-tuning (the selection kind) on the real MiniLM
encoder, on real tweets: each trains (the loss falls within a few steps, and the method's own tensors move, not just
the new head) and its file round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import peftlab
from tests.real_assets import minilm_classifier_and_batch, train_losses

# method id -> (config, sites on MiniLM's 6 layers, learning rate, steps)
CASES = {
    "ia3": (lambda: peftlab.IA3(), 24, 3e-2),  # key, value, attention.output.dense, output.dense
    "adapter": (lambda: peftlab.Adapter(preset="tiny"), 12, 1e-2),  # Houlsby: after attention and feed-forward
    "sparse": (lambda: peftlab.SparseFT(pruning=0.8, targets=["query", "value"]), 12, 1e-2),
    "bitfit": (lambda: peftlab.BitFit(), 50, 1e-2),  # every bias: 8 per layer, embeddings LayerNorm, pooler
    "full": (lambda: peftlab.FullFineTuning(), 53, 3e-4),  # selection: every module owning parameters, head apart
}
STEPS = 6
ROWS = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19])  # 4 tweets of each class (the batch holds 8 each)


@pytest.mark.parametrize("method_id", list(CASES))
def test_method_trains_minilm(method_id: str, tmp_path: Path) -> None:
    make_config, n_sites, lr = CASES[method_id]
    torch.manual_seed(0)
    base, batch = minilm_classifier_and_batch()
    batch = {k: v[ROWS] for k, v in batch.items()}
    model = peftlab.adapt(base, make_config())
    assert type(model.configs["default"]).card.id == method_id
    kinds = model.site_kinds("default")
    assert sum(k == "method" for k in kinds.values()) == n_sites
    own = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n}
    assert own, "the method has no trainable tensors of its own"
    losses = train_losses(model, batch, steps=STEPS, lr=lr)
    assert losses[-1] < 0.8 * losses[0], losses
    moved = [n for n, p in model.named_parameters() if n in own and not torch.equal(p.detach(), own[n])]
    assert len(moved) == len(own), "some of the method's tensors did not train"
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save(tmp_path / "adapter")
    fresh, _ = minilm_classifier_and_batch()
    loaded = peftlab.load(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=1e-5)
