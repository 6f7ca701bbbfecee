"""Routing: a batch whose samples (or tokens) use different adapters gives each sample the output of running it
alone with its adapter, for every routable method; errors come before any computation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import peftlab
from tests.tiny_models import tiny_bert, tiny_llama

ADAPTERS: dict[str, list[peftlab.MethodConfig]] = {
    "lora": [peftlab.LoRA(r=4, targets="all-linear", init="random"),
             peftlab.LoRA(r=2, alpha=5, targets=["q_proj", "v_proj", "query", "value", "embed_tokens",
                                                 "word_embeddings"], init="random", bias="lora_only")],
    "dora": [peftlab.DoRA(r=4, targets="all-linear", init="random"), peftlab.DoRA(r=2, init="random")],
    "vera": [peftlab.VeRA(r=8, targets="all-linear"), peftlab.VeRA(r=4, projection_prng_key=5)],
    "ia3": [peftlab.IA3(), peftlab.IA3(targets=["k_proj", "key", "up_proj", "intermediate.dense"])],
    "bitfit": [peftlab.BitFit()],
    "adapter": [peftlab.Adapter(bottleneck=4), peftlab.Adapter(bottleneck=6, placement="parallel", scale=0.5)],
    "prompt": [peftlab.PromptTuning(num_virtual_tokens=3), peftlab.PromptTuning(num_virtual_tokens=5)],
    "prefix": [peftlab.PrefixTuning(num_virtual_tokens=2), peftlab.PrefixTuning(num_virtual_tokens=4)],
}
MODELS: dict[str, Callable[[], nn.Module]] = {"llama": tiny_llama, "bert": tiny_bert}


def _batch(model_name: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(5, 7, dtype=torch.long)
    mask[2, 5:] = 0  # right padding in one sample
    return {"input_ids": torch.randint(2, 100, (5, 7), generator=g), "attention_mask": mask}


def _nudge(model: nn.Module, seed: int) -> None:
    """Move every trainable tensor off its initial value (so zero-initialised parts act)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=g) * 0.05)


def _adapted(model_name: str, configs: list[peftlab.MethodConfig]) -> peftlab.AdaptedModel:
    torch.manual_seed(0)
    model = peftlab.adapt(MODELS[model_name](), configs[0], "a0")
    _nudge(model, 1)
    for i, config in enumerate(configs[1:], start=1):
        model.add_adapter(f"a{i}", config)
        model.set_adapter(f"a{i}")
        _nudge(model, 1 + i)
    return model.eval()


def _alone(model: peftlab.AdaptedModel, batch: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    rows = []
    for i, name in enumerate(names):
        sample = {k: v[i:i + 1] for k, v in batch.items()}
        if name == "__base__":
            with model.disable_adapters():
                rows.append(model(**sample).logits)
        else:
            model.set_adapter(name)
            rows.append(model(**sample).logits)
    return torch.cat(rows)


CELLS = [(method, model) for method in ADAPTERS for model in MODELS if (method, model) != ("bitfit", "llama")]


@pytest.mark.parametrize(("method", "model_name"), CELLS, ids=[f"{m}-{n}" for m, n in CELLS])
def test_a_mixed_batch_gives_each_sample_its_own_adapter(method: str, model_name: str) -> None:
    model = _adapted(model_name, ADAPTERS[method])
    adapters = model.adapters
    names = [adapters[0], "__base__", adapters[-1], adapters[0], adapters[-1]]
    batch = _batch(model_name)
    with torch.no_grad():
        mixed = model(**batch, adapter_names=names).logits
        alone = _alone(model, batch, names)
    real = batch["attention_mask"].bool()
    if mixed.dim() == 3:  # per-token logits: padded positions are not compared
        mixed, alone = mixed[real], alone[real]
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5)


def test_methods_of_different_kinds_mix_in_one_batch() -> None:
    torch.manual_seed(0)
    model = peftlab.adapt(tiny_llama(), peftlab.LoRA(r=4, targets="all-linear", init="random"), "lora")
    for name, config in [("ia3", peftlab.IA3()), ("prompt", peftlab.PromptTuning(num_virtual_tokens=3)),
                         ("adapter", peftlab.Adapter(bottleneck=4))]:
        model.add_adapter(name, config)
    _nudge(model, 1)
    for name in model.adapters:
        model.set_adapter(name)
        _nudge(model, hash(name) % 100)
    model.eval()
    names = ["lora", "ia3", "prompt", "adapter", "__base__"]
    batch = _batch("llama")
    with torch.no_grad():
        mixed = model(**batch, adapter_names=names).logits
        alone = _alone(model, batch, names)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(mixed[real], alone[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix", "dora"])
def test_greedy_generation_with_per_sample_adapters_equals_generating_each_alone(method: str) -> None:
    model = _adapted("llama", ADAPTERS[method])
    ids = torch.randint(2, 100, (3, 5), generator=torch.Generator().manual_seed(9))
    names = ["a1", "__base__", "a0"]
    settings: dict[str, Any] = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 1}
    with torch.no_grad():
        mixed = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=names, **settings)
        for i, name in enumerate(names):
            one = ids[i:i + 1]
            if name == "__base__":
                with model.disable_adapters():
                    alone = model.generate(input_ids=one, attention_mask=torch.ones_like(one), **settings)
            else:
                model.set_adapter(name)
                alone = model.generate(input_ids=one, attention_mask=torch.ones_like(one), **settings)
            assert torch.equal(mixed[i], alone[0]), (name, mixed[i], alone[0])


def test_wrong_routing_is_refused_before_anything_runs() -> None:
    model = _adapted("llama", ADAPTERS["lora"])
    batch = _batch("llama")
    calls: list[int] = []
    model.get_base_model().register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(peftlab.AdapterStateError, match="3 names, but the batch has 5"):
        model(**batch, adapter_names=["a0", "a1", "a0"])
    with pytest.raises(peftlab.AdapterStateError, match="no adapter named 'nope'"):
        model(**batch, adapter_names=["a0", "nope", "a0", "a0", "a0"])
    with pytest.raises(peftlab.AdapterStateError, match="adapter_names must be a list"):
        model(**batch, adapter_names="a0")
    model.add_adapter("sparse", peftlab.SparseFT(pruning=0.9))
    with pytest.raises(peftlab.AdapterStateError, match=r"'sparse' \(Sparse fine-tuning\) cannot run beside"):
        model(**batch, adapter_names=["sparse"] * 5)
    model.add_adapter("reft", peftlab.LoReFT(r=2))
    with pytest.raises(peftlab.AdapterStateError, match="'reft'"):
        model(**batch, adapter_names=["reft"] * 5)
    model.set_adapter("a0")
    model.merge_adapter()
    with pytest.raises(peftlab.AdapterStateError, match="merged into the base weights"):
        model(**batch, adapter_names=["a0"] * 5)
    assert not calls


def test_token_groups_route_each_token() -> None:
    """Context-PEFT: y = W x + Σ_c m_c ⊙ s_c B_c A_c x; a sequence whose tokens are all in group c equals adapter c."""
    model = _adapted("llama", ADAPTERS["lora"])
    batch = _batch("llama")
    groups = torch.zeros(5, 7, dtype=torch.long)
    groups[1] = 1
    groups[2] = 2
    with torch.no_grad():
        mixed = model(**batch, adapter_groups=groups, group_adapters=["a0", "a1", "__base__"]).logits
        alone = _alone(model, batch, ["a0", "a1", "__base__", "a0", "a0"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(mixed[real], alone[real], atol=1e-5, rtol=1e-5)
    with pytest.raises(peftlab.AdapterStateError, match="group ids \\[3\\]"):
        model(**batch, adapter_groups=groups + 1, group_adapters=["a0", "a1", "__base__"])
    model.add_adapter("prompt", peftlab.PromptTuning(num_virtual_tokens=2))
    with pytest.raises(peftlab.AdapterStateError, match="token groups"):
        model(**batch, adapter_groups=groups, group_adapters=["a0", "prompt", "__base__"])
