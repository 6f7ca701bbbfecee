"""The per-call context: two threads running one adapted model, and a model called inside its own forward, each get
the result of running alone, for every method (per-call state lives in the call's context, not on modules)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

import peftlab
from tests.method_cases import case_fields
from tests.tiny_models import MODELS, TinyModel

ITERATIONS = 12


def _other_inputs(tiny: TinyModel) -> dict[str, Any]:
    """A second batch of another shape (and padding) than tiny.inputs(), so that state mixed between calls shows."""
    g = torch.Generator().manual_seed(7)
    if tiny.name == "mlp":
        return {"x": torch.randn(3, 16, generator=g)}
    if tiny.name == "convnet":
        return {"x": torch.randn(1, 3, 8, 8, generator=g)}
    ids = torch.randint(2, 100, (3, 5), generator=g)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, :2] = 0  # left padding in one row, none in the others
    return {"input_ids": ids, "attention_mask": mask}


def _output(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    out = model(**inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


def _configs() -> list[tuple[str, TinyModel, dict[str, Any]]]:
    cells = []
    for method_id in peftlab.method_ids():
        for tiny in MODELS:
            fields = case_fields(method_id, tiny.name)
            if not isinstance(fields, tuple):
                cells.append((f"{method_id}-{tiny.name}", tiny, {"method": method_id, **fields}))
    parallel = {"method": "adapter", "placement": "parallel", "scale": 0.5}
    cells.append(("adapter-parallel-bert", MODELS[2], parallel))
    return cells


CELLS = _configs()


def _trained(tiny: TinyModel, fields: dict[str, Any]) -> peftlab.AdaptedModel:
    model = peftlab.adapt(tiny.make(), peftlab.MethodConfig.from_dict(fields))
    torch.manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-2)
    for _ in range(3):
        optimizer.zero_grad()
        tiny.run(model).float().pow(2).mean().backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize(("name", "tiny", "fields"), CELLS, ids=[c[0] for c in CELLS])
def test_two_threads_get_the_results_of_running_alone(name: str, tiny: TinyModel, fields: dict[str, Any]) -> None:
    model = _trained(tiny, fields)
    batches = [tiny.inputs(), _other_inputs(tiny)]
    with torch.no_grad():
        alone = [_output(model, batch) for batch in batches]
    start = threading.Barrier(2)
    results: list[list[torch.Tensor]] = [[], []]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            start.wait()
            with torch.no_grad():
                for _ in range(ITERATIONS):
                    results[i].append(_output(model, batches[i]))
        except BaseException as err:  # noqa: BLE001  (reported below, with the thread's input)
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for i in range(2):
        for result in results[i]:
            torch.testing.assert_close(result, alone[i], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("name", "tiny", "fields"), CELLS, ids=[c[0] for c in CELLS])
def test_a_call_inside_a_call_leaves_the_outer_call_intact(name: str, tiny: TinyModel, fields: dict[str, Any]
                                                           ) -> None:
    """A forward hook deep inside the model runs the whole model on another batch (re-entrancy)."""
    model = _trained(tiny, fields)
    batches = [tiny.inputs(), _other_inputs(tiny)]
    with torch.no_grad():
        alone = [_output(model, batch) for batch in batches]
    inner: list[torch.Tensor] = []
    leaf = next(model.get_base_model().children())  # runs early in every call, adapted or not

    def call_again(module: torch.nn.Module, args: tuple, output: Any) -> None:
        if not inner:  # once
            inner.append(torch.zeros(0))
            inner[0] = _output(model, batches[1])

    handle = leaf.register_forward_hook(call_again)
    try:
        with torch.no_grad():
            outer = _output(model, batches[0])
    finally:
        handle.remove()
    torch.testing.assert_close(inner[0], alone[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(outer, alone[0], atol=1e-6, rtol=1e-6)
