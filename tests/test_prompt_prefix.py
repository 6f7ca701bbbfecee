"""Prompt and prefix tuning on tiny models: call rewriting, outputs, parameter counts, files and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import peftlab
from peftlab.core.model_inputs import cache_argument
from tests.tiny_models import MLP, tiny_bert, tiny_gpt2, tiny_llama


def _seeded(build: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return build().eval()


def _tokens(batch: int = 2, length: int = 6) -> torch.Tensor:
    return torch.randint(2, 100, (batch, length), generator=torch.Generator().manual_seed(2))


def test_prompt_call_is_rewritten_and_outputs_line_up() -> None:
    model = peftlab.adapt(_seeded(tiny_llama), peftlab.PromptTuning(num_virtual_tokens=3))
    assert model.trainable_parameters() == 3 * 32  # n·d
    ids = _tokens()
    seen: dict[str, Any] = {}
    model.base_model.model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    labels = ids.clone()
    out = model(ids, attention_mask=torch.ones_like(ids), labels=labels, output_hidden_states=True)  # ids by position
    assert seen["inputs_embeds"].shape == (2, 9, 32) and seen.get("input_ids") is None
    torch.testing.assert_close(seen["inputs_embeds"][0, :3], model.model_adapters["default"].prompt_embeddings)
    assert seen["attention_mask"].shape == (2, 9)
    assert out.logits.shape == (2, 6, 100), "per-token outputs line up with the input tokens"
    assert all(h.shape[1] == 6 for h in out.hidden_states)
    # The loss is the model's own over [-100] * n + labels: the last virtual position predicts the first token.
    with torch.no_grad(), model.disable_adapters():  # the rewritten call, run on the bare model
        full = model(inputs_embeds=seen["inputs_embeds"], attention_mask=seen["attention_mask"]).logits
    shifted = torch.cat([torch.full((2, 3), -100), labels], dim=1)[:, 1:]
    expected = torch.nn.functional.cross_entropy(full[:, :-1].reshape(-1, 100), shifted.reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_prompt_on_bert_extends_token_types_and_positions() -> None:
    model = peftlab.adapt(_seeded(tiny_bert), peftlab.PromptTuning(num_virtual_tokens=2))
    ids = _tokens()
    seen: dict[str, Any] = {}
    model.base_model.bert.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    positions = torch.arange(6).expand(2, 6)
    with torch.no_grad():
        explicit = model(input_ids=ids, token_type_ids=torch.ones_like(ids), position_ids=positions,
                         labels=torch.tensor([0, 1]))
        implicit = model(input_ids=ids, token_type_ids=torch.ones_like(ids), labels=torch.tensor([0, 1]))
    assert seen["token_type_ids"].tolist()[0] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert explicit.logits.shape == (2, 3)  # sequence-level outputs are not cut
    torch.testing.assert_close(explicit.logits, implicit.logits)  # given positions are counted after the prompt


def test_prompt_init_vocab_copies_token_embeddings() -> None:
    base = _seeded(tiny_gpt2)
    torch.manual_seed(3)
    prompt = peftlab.adapt(base, peftlab.PromptTuning(num_virtual_tokens=5, init="vocab"))
    rows = prompt.model_adapters["default"].prompt_embeddings.detach()
    table = base.get_input_embeddings().weight.detach()
    assert all((table == row).all(dim=1).any() for row in rows)


def test_prefix_cache_holds_the_prefix_and_counts() -> None:
    model = peftlab.adapt(_seeded(tiny_llama), peftlab.PrefixTuning(num_virtual_tokens=3))
    # tiny_llama: 2 layers, 2 key/value heads of size 8 (grouped-query attention with 4 query heads)
    assert model.trainable_parameters() == 3 * 2 * 2 * (2 * 8)  # n·2·L·d_kv
    ids = _tokens()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    assert out.logits.shape == (2, 6, 100)
    cache = getattr(out, cache_argument(type(model.base_model)))  # "cache" from transformers 5.24 on
    assert cache.get_seq_length() == 3 + 6
    flat = model.model_adapters["default"].prompt_embeddings.detach()
    keys_layer1 = cache.layers[1].keys[0, :, :3]  # (heads, n, head size) of the first row
    torch.testing.assert_close(keys_layer1, flat.view(3, 4, 2, 8)[:, 2].permute(1, 0, 2))


def test_reparameterized_prefix_saves_projected_prefixes(tmp_path: Path) -> None:
    config = peftlab.PrefixTuning(num_virtual_tokens=3, reparameterize=True, hidden=10)
    model = peftlab.adapt(_seeded(tiny_gpt2), config)
    d_kv, width = 32, 2 * 2 * 32
    assert model.trainable_parameters() == 3 * d_kv + (d_kv + 1) * 10 + (10 + 1) * width
    ids = _tokens()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.save(tmp_path / "a")
    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), framework="pt") as handle:
        assert {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118 (a safetensors handle is not a dict) == {"prompt_embeddings": (3, width)}
    file_config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert file_config["prefix_projection"] is True and file_config["encoder_hidden_size"] == 10
    assert (file_config["task_type"], file_config["token_dim"], file_config["num_layers"]) == ("CAUSAL_LM", 32, 2)
    loaded = peftlab.load(_seeded(tiny_gpt2), tmp_path / "a")
    assert loaded.configs["default"] == config
    assert loaded.trainable_parameters() == 3 * width, "a loaded adapter trains the projected prefixes directly"
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-6, rtol=1e-6)


def test_prefix_refuses_gradient_checkpointing() -> None:
    model = peftlab.adapt(_seeded(tiny_llama), peftlab.PrefixTuning(num_virtual_tokens=2))
    model.base_model.activation_checkpointing_enable()
    model.train()
    with pytest.raises(peftlab.AdapterStateError, match="checkpointing"):
        model(input_ids=_tokens())


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_configs_reject_module_fields_and_bad_values(method: str) -> None:
    with pytest.raises(peftlab.ConfigError, match="targets"):
        peftlab.config_for(method, targets=["query"])
    with pytest.raises(peftlab.ConfigError, match="layers"):
        peftlab.config_for(method, layers=[0])
    with pytest.raises(peftlab.ConfigError, match="num_virtual_tokens"):
        peftlab.config_for(method, num_virtual_tokens=0)
    with pytest.raises(peftlab.TargetError, match="token embeddings"):
        peftlab.adapt(MLP(), peftlab.config_for(method))


def test_prompt_and_prefix_config_errors() -> None:
    with pytest.raises(peftlab.ConfigError, match="init_text"):
        peftlab.PromptTuning(init="text", tokenizer_path="some/tokenizer")
    with pytest.raises(peftlab.ConfigError, match="tokenizer_path"):
        peftlab.PromptTuning(init="text", init_text="Classify the sentiment")
    with pytest.raises(peftlab.ConfigError, match="init_text"):
        peftlab.PromptTuning(init_text="only with init='text'")
    with pytest.raises(peftlab.ConfigError, match="init"):
        peftlab.PromptTuning(init="zeros")
    with pytest.raises(peftlab.ConfigError, match="reparameterize=True"):
        peftlab.PrefixTuning(hidden=16)


def test_the_cache_is_found_under_either_argument_name() -> None:
    """transformers 5.24 renamed the forward argument past_key_values to cache; the input-side methods read both and
    pass a cache they create under the name the model's forward takes (the tests' environment pins one version)."""
    from transformers import DynamicCache

    from peftlab.core.model_inputs import CACHE_ARGUMENTS, find_cache

    cache = DynamicCache()
    for name in CACHE_ARGUMENTS:
        assert find_cache({"input_ids": None, name: cache}) is cache
        assert find_cache({name: None}) is None

    class RenamedForward(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, cache: Any = None) -> torch.Tensor:
            return input_ids

    assert cache_argument(RenamedForward) == "cache"
    assert cache_argument(torch.nn.Linear) == "past_key_values"  # no cache argument at all: the older name
    assert cache_argument(type(tiny_llama())) in CACHE_ARGUMENTS
