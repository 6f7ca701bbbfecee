"""An adapted model in a Hugging Face Accelerate training loop: prepare, accumulate, backward, autocast, unwrap, save.

Single process on the CPU (what this machine has); Accelerate takes the same code to CUDA, MPS and several processes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import peftlab
from tests.tiny_models import tiny_bert

accelerate = pytest.importorskip("accelerate")


@pytest.fixture(autouse=True)
def _fresh_accelerator_state() -> Iterator[None]:
    """Accelerate keeps one process-wide state (device, mixed precision): start every test from none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _loader() -> DataLoader:
    """Eight labelled token sequences in batches of two."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 100, (8, 8), generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    return DataLoader(TensorDataset(ids, labels), batch_size=2, shuffle=False)


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_bert()


def _train(accelerator: accelerate.Accelerator, model: peftlab.AdaptedModel, epochs: int) -> list[float]:
    """The plain Accelerate recipe; returns the mean loss of each epoch."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, _loader())
    model.train()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for ids, labels in loader:
            with accelerator.accumulate(model):
                loss = model(input_ids=ids, labels=labels).loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            total += loss.item()
        losses.append(total / len(loader))
    return losses


def test_accelerate_loop_trains_the_adapter_and_the_unwrapped_model_saves(tmp_path: Path) -> None:
    base = _base()
    model = peftlab.adapt(copy.deepcopy(base), peftlab.LoRA(r=4, alpha=8, targets=["query", "value"]))
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    losses = _train(accelerator, model, epochs=15)
    assert losses[-1] < 0.7 * losses[0], losses  # it learns the eight examples

    unwrapped = accelerator.unwrap_model(model)
    assert isinstance(unwrapped, peftlab.AdaptedModel)
    for name, param in unwrapped.named_parameters():  # the base stayed frozen and untouched
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    unwrapped.save(tmp_path / "adapter")
    reloaded = peftlab.load(copy.deepcopy(base), tmp_path / "adapter")
    ids = next(iter(_loader()))[0]
    unwrapped.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, unwrapped(input_ids=ids).logits)


@pytest.mark.parametrize("method", [peftlab.LoRA(r=4, targets=["query", "value"], dropout=0.1),
                                    peftlab.DoRA(r=4, targets=["query", "value"]), peftlab.IA3()],
                         ids=["lora", "dora", "ia3"])
def test_accelerate_bf16_autocast_trains_float32_adapter_weights(method: peftlab.MethodConfig) -> None:
    """mixed_precision="bf16": the forward runs under autocast (a plain Linear of the base computes in bfloat16),
    the adapter weights stay float32 and the optimizer moves them."""
    model = peftlab.adapt(_base(), method)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    dtypes: set[torch.dtype] = set()
    intermediate = model.base_model.bert.encoder.layer[0].intermediate.dense  # adapted by none of the three
    intermediate.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision="bf16")
    losses = _train(accelerator, model, epochs=1)
    assert dtypes == {torch.bfloat16}
    assert all(torch.isfinite(torch.tensor(losses)))
    after = dict(accelerator.unwrap_model(model).named_parameters())
    for name, old in before.items():
        assert after[name].dtype == torch.float32
        assert not torch.equal(after[name], old), f"{name} did not move"
