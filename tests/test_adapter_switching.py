"""Switching between loaded adapters is bookkeeping only: no tensor operation runs, no tensor is copied or moved."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import peftlab
from tests.tiny_models import tiny_llama


class RecordOps(TorchDispatchMode):
    """Every aten operator called while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _storages(model: torch.nn.Module) -> dict[str, int]:
    return {name: t.untyped_storage().data_ptr() for name, t in model.state_dict(keep_vars=True).items()}


def test_set_adapter_between_loaded_adapters_runs_no_tensor_op(tmp_path: Path) -> None:
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    outputs = {}
    for seed, name in enumerate(("first", "second")):  # two different adapters on the same base weights, on disk
        torch.manual_seed(0)
        base = tiny_llama()
        torch.manual_seed(seed + 1)
        trained = peftlab.adapt(base, peftlab.LoRA(r=4, targets="all-linear", init="random"))
        trained.save(tmp_path / name)
        outputs[name] = trained(input_ids=ids).logits.detach()
    torch.manual_seed(0)
    model = peftlab.load(tiny_llama(), tmp_path / "first", adapter_name="first")
    model.load_adapter(tmp_path / "second", adapter_name="second")
    before = _storages(model)
    for name in ("second", "first", "second"):
        with RecordOps() as recorded:
            model.set_adapter(name)
        assert recorded.ops == [], f"set_adapter ran tensor operations: {recorded.ops}"
        assert _storages(model) == before  # nothing reallocated, copied or moved
        torch.testing.assert_close(model(input_ids=ids).logits, outputs[name])
