"""Frozen stacks (PEFTDebias): an adapter trained upstream stays frozen under a new trainable one; both save, and the
reloaded stack gives the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import peftlab
from tests.tiny_models import tiny_bert


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {"input_ids": torch.randint(2, 100, (4, 6), generator=g), "labels": torch.tensor([0, 1, 2, 1])}


def _steps(model: peftlab.AdaptedModel, n: int) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(n):
        optimizer.zero_grad()
        model(**_batch()).loss.backward()
        optimizer.step()


def test_a_frozen_upstream_adapter_stays_as_trained_under_the_task_adapter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA(r=4, targets=["query", "value"], modules_to_save=[]), "upstream")
    _steps(model, 3)
    upstream = {k: v.clone() for k, v in peftlab.io.adapter_files.adapter_tensors(model.adapter("upstream")).items()}
    model.add_adapter("task", peftlab.IA3(modules_to_save=[]))
    model.set_adapter(["task", "upstream"], trainable="task")
    assert model.trainable_adapters == ("task",)
    assert all(not p.requires_grad for p in model.adapter("upstream").parameters())
    assert "adapter 'upstream' (active, frozen)" in model.summary()
    _steps(model, 3)
    after = peftlab.io.adapter_files.adapter_tensors(model.adapter("upstream"))
    assert all(torch.equal(after[k], v) for k, v in upstream.items())
    assert any(not torch.equal(p, torch.ones_like(p)) for p in model.adapter("task").parameters())
    model.eval()
    with torch.no_grad():
        expected = model(**_batch()).logits
    model.save(tmp_path)
    again = peftlab.load(tiny_bert_seeded(), tmp_path / "upstream", "upstream")
    again.load_adapter(tmp_path / "task", "task")
    again.set_adapter(["task", "upstream"], trainable="task")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(**_batch()).logits, expected, atol=1e-6, rtol=0)


def tiny_bert_seeded() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_bert()


def test_trainable_must_be_active() -> None:
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA(r=2), "a")
    model.add_adapter("b", peftlab.LoRA(r=2))
    with pytest.raises(peftlab.AdapterStateError, match="only active adapters"):
        model.set_adapter("a", trainable="b")
