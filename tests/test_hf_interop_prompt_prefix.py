"""Prompt and prefix tuning files exchanged with Hugging Face PEFT, both ways, on tiny models built from configs.

Each case runs in both directions from one seeded base model (deep copies on each side):
    HF get_peft_model(...).save_pretrained -> peftlab.load              gives the HF model's outputs;
    peftlab adapt(...).save                -> PeftModel.from_pretrained gives peftlab's outputs.
Every trainable tensor (prompts, prefixes, the saved classification head) is moved off its initial value first.
Hugging Face PEFT's prompt-tuning logits keep the n virtual positions; peftlab drops them, so we compare the real
tokens' logits and the loss (both libraries give -100 labels to virtual positions). Both files carry the same keys.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import nn

import peftlab
from tests.tiny_models import tiny_bert, tiny_gpt2, tiny_llama

pytest.importorskip("peft")
from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

ATOL = 1e-5
N = 4  # virtual tokens


def _batch(causal: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # the second row is padded on the right
    if causal:
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.tensor([0, 2])}


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], nn.Module]
    task: TaskType
    hf: Callable[[], Any]
    ours: Callable[[], peftlab.MethodConfig]
    virtual_logits: bool  # HF's logits carry the virtual positions (prompt tuning on a causal LM)


CASES = [
    Case("prompt-bert-seqcls", tiny_bert, TaskType.SEQ_CLS,
         lambda: PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=N),
         lambda: peftlab.PromptTuning(num_virtual_tokens=N), False),
    Case("prompt-llama-causal", tiny_llama, TaskType.CAUSAL_LM,
         lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=N),
         lambda: peftlab.PromptTuning(num_virtual_tokens=N, init="vocab"), True),
    Case("prompt-gpt2-causal", tiny_gpt2, TaskType.CAUSAL_LM,
         lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=N),
         lambda: peftlab.PromptTuning(num_virtual_tokens=N), True),
    Case("prefix-bert-seqcls", tiny_bert, TaskType.SEQ_CLS,
         lambda: PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=N),
         lambda: peftlab.PrefixTuning(num_virtual_tokens=N), False),
    Case("prefix-llama-causal-gqa", tiny_llama, TaskType.CAUSAL_LM,
         lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=N),
         lambda: peftlab.PrefixTuning(num_virtual_tokens=N), False),
    Case("prefix-llama-projected", tiny_llama, TaskType.CAUSAL_LM,
         lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=N, prefix_projection=True,
                                    encoder_hidden_size=12),
         lambda: peftlab.PrefixTuning(num_virtual_tokens=N, reparameterize=True, hidden=12), False),
    Case("prefix-gpt2-causal", tiny_gpt2, TaskType.CAUSAL_LM,
         lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=N),
         lambda: peftlab.PrefixTuning(num_virtual_tokens=N), False),
]


def _base(case: Case) -> nn.Module:
    torch.manual_seed(0)
    return case.build().eval()


def _perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=g))


def _keys(folder: Path) -> set[str]:
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def _compare(case: Case, hf_out: Any, our_out: Any) -> None:
    hf_logits = hf_out.logits
    if case.virtual_logits:  # HF returns logits for the virtual positions too; ours line up with the input tokens
        assert hf_logits.shape[1] == our_out.logits.shape[1] + N
        hf_logits = hf_logits[:, N:]
    torch.testing.assert_close(our_out.logits, hf_logits, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(our_out.loss, hf_out.loss, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hf_file_loads_into_peftlab(case: Case, tmp_path: Path) -> None:
    base = _base(case)
    hf = get_peft_model(copy.deepcopy(base), case.hf())
    _perturb(hf, seed=1)
    hf.save_pretrained(tmp_path / "hf")
    batch = _batch(case.task == TaskType.CAUSAL_LM)
    with torch.no_grad():
        expected = hf(**batch)
    ours = peftlab.load(copy.deepcopy(base), tmp_path / "hf").eval()
    with torch.no_grad():
        _compare(case, expected, ours(**batch))
    ours.save(tmp_path / "ours")
    assert _keys(tmp_path / "ours") == _keys(tmp_path / "hf")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_peftlab_file_loads_into_hf(case: Case, tmp_path: Path) -> None:
    base = _base(case)
    ours = peftlab.adapt(copy.deepcopy(base), case.ours())
    _perturb(ours, seed=2)
    ours.save(tmp_path / "ours")
    batch = _batch(case.task == TaskType.CAUSAL_LM)
    with torch.no_grad():
        expected = ours(**batch)
    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    assert hf.peft_config["default"].task_type == case.task
    with torch.no_grad():
        _compare(case, hf(**batch), expected)


@pytest.mark.parametrize("case", [c for c in CASES if c.task == TaskType.CAUSAL_LM and "gpt2" not in c.id],
                         ids=lambda c: c.id)
def test_greedy_generate_matches_hf(case: Case, tmp_path: Path) -> None:
    base = _base(case)
    ours = peftlab.adapt(copy.deepcopy(base), case.ours())
    _perturb(ours, seed=3)
    ours.save(tmp_path / "ours")
    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    prompt = torch.randint(2, 100, (2, 5), generator=torch.Generator().manual_seed(4))
    settings = {"max_new_tokens": 4, "do_sample": False, "eos_token_id": None, "pad_token_id": 1}
    with torch.no_grad():
        expected = hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **settings)
        got = ours.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **settings)
    assert torch.equal(got, expected)
