"""generate() with prompt tuning, prefix tuning and LoReFT active on a causal LM built from a Llama config.

Greedy generation must differ from the base model's and, for prompt and prefix tuning, equal a greedy loop that calls
the adapted model on the whole sequence each step without a cache: that checks the virtual tokens enter the cache
exactly once and that later steps get the longer mask and the shifted positions. The batch has a left-padded row.
LoReFT edits the prompt's positions only (as pyreft does): its first new token is the argmax of an uncached forward,
and calls continuing the cache pass through the blocks unedited.
"""

from __future__ import annotations

import pytest
import torch

import peftlab
from peftlab.core.model_inputs import cache_argument
from tests.tiny_models import tiny_llama

STEPS = 4
SETTINGS = {"max_new_tokens": STEPS, "do_sample": False, "eos_token_id": None, "pad_token_id": 1}


def _llama() -> torch.nn.Module:
    """tiny_llama with value/output projections ×4: at its random init the next token hardly depends on context."""
    torch.manual_seed(0)
    model = tiny_llama().eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight.mul_(4)
            layer.self_attn.o_proj.weight.mul_(4)
    return model


def _prompt_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(2, 100, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding, as generation batches are padded
    ids[1, :2] = 1
    return ids, mask


def _greedy_without_cache(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    for _ in range(STEPS):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # generate()'s positions for a padded batch
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        next_token = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        ids = torch.cat([ids, next_token], dim=1)
        mask = torch.cat([mask, torch.ones_like(next_token)], dim=1)
    return ids


def _generate(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, **SETTINGS)


@pytest.mark.parametrize("config", [
    peftlab.PromptTuning(num_virtual_tokens=3, init="vocab"),
    peftlab.PromptTuning(num_virtual_tokens=5),
    peftlab.PrefixTuning(num_virtual_tokens=3),
    peftlab.PrefixTuning(num_virtual_tokens=2, reparameterize=True, hidden=8),
], ids=["prompt-vocab", "prompt-random", "prefix", "prefix-reparameterized"])
def test_generate_equals_uncached_greedy_loop(config: peftlab.MethodConfig) -> None:
    ids, mask = _prompt_batch()
    base_tokens = _generate(_llama(), ids, mask)
    model = peftlab.adapt(_llama(), config)
    with torch.no_grad():  # a trained adapter, not the initial one
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(5)))
    tokens = _generate(model, ids, mask)
    assert tokens.shape == (2, ids.shape[1] + STEPS)
    assert torch.equal(tokens, _greedy_without_cache(model, ids, mask))
    with torch.no_grad():  # generate's own uncached path: no cache may come back to be fed into the next step
        assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **SETTINGS), tokens)
    assert not torch.equal(tokens, base_tokens), "the adapter did not change the generation"
    with model.disable_adapters():
        assert torch.equal(_generate(model, ids, mask), base_tokens)


def test_generate_with_loreft_edits_the_prompt_only() -> None:
    ids, mask = _prompt_batch()
    base_tokens = _generate(_llama(), ids, mask)
    model = peftlab.adapt(_llama(), peftlab.LoReFT(r=4, positions="f1+l2"))
    tokens = _generate(model, ids, mask)
    assert not torch.equal(tokens, base_tokens), "the intervention did not change the generation"
    assert torch.equal(tokens, _generate(model, ids, mask))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        first = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, -1]
    assert torch.equal(tokens[:, ids.shape[1]], first.argmax(-1))

    block = model.base_model.model.layers[1]  # an AdaptedLayer: compare its output with the bare block's
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    inner: list[torch.Tensor] = []
    block.base_layer.register_forward_hook(lambda m, a, out: inner.append(out))
    block.register_forward_hook(lambda m, a, out: seen.append((inner[-1], out)))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache_name = cache_argument(type(model.base_model))  # "cache" from transformers 5.24 on
        model(input_ids=tokens[:, ids.shape[1]:ids.shape[1] + 1], attention_mask=torch.ones(2, 7, dtype=torch.long),
              **{cache_name: getattr(out, cache_name)})
    (bare_prompt, edited_prompt), (bare_step, edited_step) = seen
    assert not torch.equal(bare_prompt, edited_prompt)
    assert torch.equal(bare_step, edited_step), "a call continuing the cache was edited"


POSITION_FREE = [m for m in peftlab.method_ids() if m not in ("prompt", "prefix", "loreft")]  # those three: above


@pytest.mark.parametrize("method_id", POSITION_FREE)
def test_generate_works_with_every_other_method(method_id: str) -> None:
    """Weight deltas, inserted modules and selection act the same at every position: cached == uncached."""
    ids, mask = _prompt_batch()
    base_tokens = _generate(_llama(), ids, mask)
    if method_id == "bitfit":  # Llama has no bias terms: BitFit must say so instead of training nothing
        with pytest.raises(peftlab.TargetError, match="no module of this model is of a kind BitFit adapts"):
            peftlab.adapt(_llama(), peftlab.config_for(method_id))
        return
    model = peftlab.adapt(_llama(), peftlab.config_for(method_id))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(5)))
    tokens = _generate(model, ids, mask)
    assert torch.equal(tokens, _greedy_without_cache(model, ids, mask))
    with torch.no_grad():  # generate's own uncached path: no cache may come back to be fed into the next step
        assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **SETTINGS), tokens)
    assert not torch.equal(tokens, base_tokens), "the adapter did not change the generation"
