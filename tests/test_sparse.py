"""Sparse fine-tuning: only the masked entries of each weight change, the mask follows `selection`, files hold only
values and indices (their size scales with the density), and several adapters at one site add up."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import peftlab
from peftlab.methods.sparse import SparseDelta, select_by_gradient
from tests.tiny_models import MODELS, TinyModel

TINY = {m.name: m for m in MODELS}
BERT, GPT2, CONVNET = TINY["bert"], TINY["gpt2"], TINY["convnet"]


def _train(model: peftlab.AdaptedModel, tiny: TinyModel, steps: int = 3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        tiny.run(model).pow(2).mean().backward()
        opt.step()


def _sites(model: peftlab.AdaptedModel, name: str = "default") -> dict[str, tuple[SparseDelta, torch.nn.Module]]:
    return {p: (s, m) for p, (s, m) in model.site_adapters(name).items() if isinstance(s, SparseDelta)}


@pytest.mark.parametrize("tiny, fields", [
    (BERT, {}), (GPT2, {}), (BERT, {"targets": ["word_embeddings", "query"]}),
    (CONVNET, {"targets": ["conv1", "conv2", "fc"]})], ids=["bert", "gpt2-conv1d", "bert-embedding", "convnet"])
def test_only_masked_entries_of_the_weights_change(tiny: TinyModel, fields: dict[str, Any]) -> None:
    base = tiny.make()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = peftlab.adapt(base, peftlab.SparseFT(pruning=0.8, modules_to_save=[], **fields))
    sites = _sites(model)
    assert model.trainable_parameters() == sum(round(0.2 * m.weight.numel()) for _, m in sites.values())
    _train(model, tiny)
    with torch.no_grad():
        effective = {p: s.effective(m.weight) for p, (s, m) in sites.items()}
        expected = tiny.run(model)
        plain = model.merge_and_unload()
        torch.testing.assert_close(tiny.run(plain), expected, atol=1e-5, rtol=1e-5)
    after = plain.state_dict()
    for path, (site, _) in sites.items():
        key = f"{path}.weight"
        torch.testing.assert_close(after[key], effective[path], atol=0, rtol=0)
        changed = (after[key] != before[key]).flatten().nonzero().flatten()
        mask = set(site.sparse_indices.tolist())
        assert 0 < changed.numel() <= len(mask)
        assert set(changed.tolist()) <= mask, f"{path}: entries outside the mask changed"
    for key, value in before.items():  # everything else (biases, norms, untargeted weights) is untouched
        if not any(key == f"{p}.weight" for p in sites):
            assert torch.equal(after[key], value), key


def test_file_size_scales_with_density(tmp_path: Path) -> None:
    sizes = {}
    for pruning in (0.4, 0.8):
        model = peftlab.adapt(BERT.make(), peftlab.SparseFT(pruning=pruning, modules_to_save=[]))
        _train(model, BERT, steps=1)
        model.save(tmp_path / str(pruning))
        sizes[pruning] = (tmp_path / str(pruning) / "adapter_model.safetensors").stat().st_size
        k = model.trainable_parameters()
        assert sizes[pruning] < 8 * k + 8_000, "values (float32) + indices (int32) + header, nothing dense"
    ratio = sizes[0.8] / sizes[0.4]
    assert abs(ratio - 1 / 3) < 0.05, sizes  # density 0.2 / 0.6


def test_selections_choose_their_masks() -> None:
    base = BERT.make()
    weight = base.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    path = "bert.encoder.layer.0.attention.self.query"

    def mask(**fields: Any) -> set[int]:
        model = peftlab.adapt(copy.deepcopy(base), peftlab.SparseFT(targets=["query"], pruning=0.75, **fields))
        return set(_sites(model)[path][0].sparse_indices.tolist())

    k = round(0.25 * weight.numel())
    assert mask(selection="magnitude") == set(weight.abs().flatten().topk(k).indices.tolist())
    assert mask(seed=0) == mask(seed=0) != mask(seed=1)
    assert len(mask(seed=3)) == k


def test_gradient_selection_is_explicit_and_exact(tmp_path: Path) -> None:
    base = BERT.make()
    g = torch.Generator().manual_seed(0)
    batches = [{**BERT.inputs(), "labels": torch.randint(0, 3, (2,), generator=g)} for _ in range(2)]
    reference = copy.deepcopy(base)
    weight = reference.bert.encoder.layer[1].attention.self.value.weight
    weight.requires_grad_(True)
    score = sum(torch.autograd.grad(reference(**b).loss, weight)[0].abs() for b in batches)

    model = peftlab.adapt(base, peftlab.SparseFT(targets=["value"], pruning=0.5, selection="gradient"))
    with pytest.raises(peftlab.AdapterStateError, match="select_by_gradient"):
        BERT.run(model)
    scores = select_by_gradient(model, batches)
    path = "bert.encoder.layer.1.attention.self.value"
    torch.testing.assert_close(scores[path], score)
    site = _sites(model)[path][0]
    assert set(site.sparse_indices.tolist()) == set(score.flatten().topk(site.sparse_values.numel()).indices.tolist())
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".adapters." not in n)  # base refrozen
    assert all(p.grad is None for p in model.parameters())
    _train(model, BERT, steps=1)
    with pytest.raises(peftlab.AdapterStateError, match="trained already"):
        select_by_gradient(model, batches)
    model.save(tmp_path)  # the saved mask comes back on load: no selection needed there
    with torch.no_grad():
        torch.testing.assert_close(BERT.run(peftlab.load(BERT.make(), tmp_path)), BERT.run(model), atol=0, rtol=0)
    random = peftlab.adapt(BERT.make(), peftlab.SparseFT())
    with pytest.raises(peftlab.AdapterStateError, match="selection='gradient'"):
        select_by_gradient(random, batches)


def test_two_active_adapters_add_their_deltas() -> None:
    """With two adapters at a site, the outer one adds its Δ's product to the inner result (not the fused call)."""
    model = peftlab.adapt(GPT2.make(), peftlab.SparseFT(pruning=0.5, seed=0))
    _train(model, GPT2, steps=2)
    model.add_adapter("second", peftlab.SparseFT(pruning=0.5, seed=1))
    model.set_adapter("second")
    _train(model, GPT2, steps=2)
    model.set_adapter(["default", "second"])
    with torch.no_grad():
        both = GPT2.run(model)
        model.merge_adapter()
        torch.testing.assert_close(GPT2.run(model), both, atol=1e-5, rtol=1e-5)
        model.unmerge()


def test_config_validation() -> None:
    with pytest.raises(peftlab.ConfigError, match=r"pruning=1\.0 is out of range"):
        peftlab.SparseFT(pruning=1.0)
    with pytest.raises(peftlab.ConfigError, match="selection"):
        peftlab.SparseFT(selection="largest")
    assert peftlab.SparseFT(pruning=0.4).count(1000) == 600
