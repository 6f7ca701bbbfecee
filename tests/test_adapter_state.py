"""The adapted model's state stays consistent: stacked merges, failed calls that must leave nothing behind, and names
given in the forms users write them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import peftlab
from tests.tiny_models import tiny_llama

IDS = torch.randint(2, 100, (2, 8), generator=torch.Generator().manual_seed(1))


def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_llama().eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def stacked(outer: peftlab.MethodConfig, inner: peftlab.MethodConfig) -> peftlab.AdaptedModel:
    """Two adapters at the same layers, both active (outer first), every tensor off its initial value."""
    model = peftlab.adapt(llama(), outer, "outer")
    model.add_adapter("inner", inner)
    with torch.no_grad():
        for name in ("outer", "inner"):
            for site, _ in model.site_adapters(name).values():
                for param in site.parameters():
                    param.add_(0.3 * torch.randn_like(param))
    model.set_adapter(["outer", "inner"])
    return model


QV = ["q_proj", "v_proj"]
LORA = peftlab.LoRA(r=4, targets=QV, init="random")
IA3 = peftlab.IA3(targets=QV, feedforward=[])
DORA = peftlab.DoRA(r=2, targets=QV, init="random")


@pytest.mark.parametrize(("outer", "inner"), [(LORA, IA3), (IA3, LORA), (LORA, DORA), (LORA, LORA)],
                         ids=["lora-over-ia3", "ia3-over-lora", "lora-over-dora", "lora-over-lora"])
def test_merging_a_stack_gives_the_unmerged_outputs(outer: peftlab.MethodConfig, inner: peftlab.MethodConfig) -> None:
    model = stacked(outer, inner)
    unmerged = logits(model)
    model.merge_adapter()
    torch.testing.assert_close(logits(model), unmerged, atol=1e-5, rtol=0)
    model.unmerge()
    torch.testing.assert_close(logits(model), unmerged, atol=1e-5, rtol=0)


def test_stacks_that_no_fold_reproduces_are_refused() -> None:
    model = stacked(LORA, IA3)
    with pytest.raises(peftlab.AdapterStateError, match=r"while \['inner'\] stay unmerged inside it"):
        model.merge_adapter("outer")
    model = stacked(DORA, LORA)
    with pytest.raises(peftlab.AdapterStateError, match="depends on the base weight"):
        model.merge_adapter()
    assert model.merged_adapters == []
    additive = stacked(LORA, LORA)
    unmerged = logits(additive)
    additive.merge_adapter("outer")  # two sums commute
    torch.testing.assert_close(logits(additive), unmerged, atol=1e-5, rtol=0)


def test_deleting_a_merged_adapter_leaves_the_model_usable() -> None:
    model = peftlab.adapt(llama(), LORA, "a")
    model.add_adapter("b", peftlab.LoRA(r=2, targets=["k_proj"]))
    model.merge_adapter(["a"])
    with pytest.raises(peftlab.AdapterStateError, match="is merged"):
        model.delete_adapter("a")
    model.unmerge()
    model.delete_adapter("a")
    assert model.adapters == ["b"]
    model.summary()


@pytest.mark.parametrize("first_config", [LORA, peftlab.PromptTuning(num_virtual_tokens=2)], ids=["lora", "prompt"])
def test_a_base_already_adapted_is_refused(first_config: peftlab.MethodConfig) -> None:
    base = llama()
    first = peftlab.adapt(base, first_config)
    before = logits(first)
    with pytest.raises(peftlab.AdapterStateError, match="already adapted"):
        peftlab.adapt(base, peftlab.LoRA(r=2, targets=QV, init="random"))
    torch.testing.assert_close(logits(first), before, atol=0, rtol=0)


@pytest.mark.parametrize("bad", [peftlab.LoRA(targets=["q_prj"]), peftlab.PromptTuning(num_virtual_tokens=3)])
def test_a_failed_adapt_or_load_leaves_the_base_as_it_was(bad: peftlab.MethodConfig, tmp_path: Path) -> None:
    base = llama()
    if isinstance(bad, peftlab.PromptTuning):  # a prompt adapter saved for a wider model
        peftlab.adapt(tiny_llama_wide(), bad).save(tmp_path)
        call = lambda: peftlab.load(base, tmp_path)
    else:
        call = lambda: peftlab.adapt(base, bad)
    with pytest.raises(peftlab.PeftlabError):
        call()
    assert all(p.requires_grad for p in base.parameters())
    assert not base._forward_pre_hooks and not base._forward_hooks
    peftlab.adapt(base, LORA)  # and it can be adapted again


def tiny_llama_wide() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=100))


def test_names_in_the_forms_users_write_them(tmp_path: Path) -> None:
    model = peftlab.adapt(llama(), LORA)
    with pytest.raises(peftlab.AdapterStateError, match="names an adapter twice"):
        model.set_adapter(["default", "default"])
    with pytest.raises(peftlab.AdapterStateError, match="an adapter name or a list of names"):
        model.set_adapter(123)
    model.merge_adapter("default")  # a plain string is one name
    assert model.merged_adapters == ["default"]
    model.unmerge()
    (tmp_path / "file").write_text("x")
    with pytest.raises(peftlab.AdapterSaveError, match="is a file"):
        model.save(tmp_path / "file" / "sub")
    model.save(tmp_path / "ok", adapter_names="default")
    assert (tmp_path / "ok" / "adapter_config.json").is_file()


@pytest.mark.parametrize("config", [LORA, peftlab.PrefixTuning(num_virtual_tokens=2)], ids=["lora", "prefix"])
def test_an_adapted_model_pickles(config: peftlab.MethodConfig) -> None:
    """torch.save(model) / pickle: the AdaptedModel class made for the base class is rebuilt on load, and the
    model-level hooks (prefix tuning) point at the copy."""
    import io
    import pickle

    model = peftlab.adapt(llama(), config)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert type(restored) is type(model)
    torch.testing.assert_close(logits(restored), logits(model), atol=0, rtol=0)
    torch.testing.assert_close(logits(pickle.loads(pickle.dumps(model))), logits(model), atol=0, rtol=0)
    with restored.disable_adapters():
        torch.testing.assert_close(logits(restored), logits(llama()), atol=0, rtol=0)
