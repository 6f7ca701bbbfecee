"""Routing against Hugging Face PEFT's adapter_names, and routed training: multi-tenant training equals training
each adapter alone; token groups (Context-PEFT) train each group's adapter on its own tokens only."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import peftlab
from tests.tiny_models import tiny_gpt2, tiny_llama

pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model


def _nudged(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=g) * 0.1)


def test_lora_mixed_batch_equals_hf_peft_adapter_names(tmp_path: Path) -> None:
    """GPT-2 with five LoRA adapters saved by Hugging Face PEFT: the same adapter_names give the same logits."""
    torch.manual_seed(0)
    base = tiny_gpt2()
    hf = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]))
    for i in range(5):
        name = "default" if i == 0 else f"user{i}"
        if i:
            hf.add_adapter(name, LoraConfig(r=2 + i, lora_alpha=4 * i, target_modules=["c_attn", "c_proj"]))
        hf.set_adapter(name)
        _nudged(hf, i)
    hf.save_pretrained(tmp_path)
    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    ours = peftlab.load(copy.deepcopy(base), tmp_path)
    for i in range(1, 5):
        hf.load_adapter(tmp_path / f"user{i}", f"user{i}")
        ours.load_adapter(tmp_path / f"user{i}", f"user{i}")
    ours.eval()
    ids = torch.randint(0, 100, (7, 6), generator=torch.Generator().manual_seed(1))
    names = ["user3", "default", "__base__", "user1", "user4", "user2", "user3"]
    with torch.no_grad():
        expected = hf(input_ids=ids, adapter_names=names).logits
        got = ours(input_ids=ids, adapter_names=names).logits
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _per_adapter_loss(model: peftlab.AdaptedModel, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Σ over adapters of the mean next-token loss of that adapter's samples: each adapter's gradient is that of
    its own samples' mean loss, as when it is trained alone."""
    logits = model(input_ids=ids, adapter_names=names).logits[:, :-1]
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                               reduction="none").view(ids.shape[0], -1).mean(1)  # (B,)
    return sum(losses[[i for i, n in enumerate(names) if n == name]].mean() for name in dict.fromkeys(names))


def test_multi_tenant_training_equals_training_each_adapter_alone() -> None:
    torch.manual_seed(0)
    base = tiny_llama()
    users = {f"user{i}": peftlab.LoRA(r=2 + i, targets=["q_proj", "v_proj", "down_proj"], init="random")
             for i in range(3)}
    data = {name: torch.randint(2, 100, (2, 6), generator=torch.Generator().manual_seed(10 + i))
            for i, name in enumerate(users)}

    def trained_alone(name: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        model = peftlab.adapt(copy.deepcopy(base), users[name], name)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(20):
            optimizer.zero_grad()
            _per_adapter_loss(model, data[name], [name] * 2).backward()
            optimizer.step()
        return model.adapter(name).state()

    torch.manual_seed(1)
    together = peftlab.adapt(copy.deepcopy(base), users["user0"], "user0")
    for name in list(users)[1:]:
        torch.manual_seed(1)
        together.add_adapter(name, users[name])
    together.set_adapter(list(users))  # all trainable
    optimizer = torch.optim.AdamW([p for p in together.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.cat(list(data.values()))
    names = [name for name in users for _ in range(2)]
    for _ in range(20):
        optimizer.zero_grad()
        _per_adapter_loss(together, ids, names).backward()
        optimizer.step()
    for name in users:
        alone = trained_alone(name)
        for path, tensors in together.adapter(name).state().items():
            for key, value in tensors.items():
                torch.testing.assert_close(value, alone[path][key], atol=1e-5, rtol=0,
                                           msg=lambda m, p=path, k=key: f"{p}.{k}: {m}")


def test_token_groups_train_each_adapter_on_its_own_tokens_only() -> None:
    """Context-PEFT with two groups: the text adapter's gradient comes from text tokens only (it is that of a run
    where the image tokens use the base), and a group absent from a batch gets no gradient."""
    torch.manual_seed(0)
    model = peftlab.adapt(tiny_llama(), peftlab.LoRA(r=4, targets="all-linear", init="random"), "text")
    model.add_adapter("image", peftlab.LoRA(r=4, targets="all-linear", init="random"))
    model.set_adapter(["text", "image"])
    ids = torch.randint(2, 100, (2, 8), generator=torch.Generator().manual_seed(3))
    groups = torch.zeros(2, 8, dtype=torch.long)
    groups[:, :3] = 1  # the first three tokens of each sequence are "image" tokens

    def grads(group_adapters: list[str]) -> dict[str, torch.Tensor]:
        model.zero_grad()
        logits = model(input_ids=ids, adapter_groups=groups, group_adapters=group_adapters).logits
        logits[:, -1].pow(2).sum().backward()
        return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                for n, p in model.named_parameters() if p.requires_grad}

    both = grads(["text", "image"])
    text_only = grads(["text", "__base__"])
    for name, grad in both.items():
        if ".adapters.text." in name:
            assert grad.abs().sum() > 0
    image_only = grads(["__base__", "image"])
    assert all(g.abs().sum() == 0 for n, g in text_only.items() if ".adapters.image." in n)
    assert all(g.abs().sum() == 0 for n, g in image_only.items() if ".adapters.text." in n)
    # Training: each adapter moves; the image adapter does not move when no token is in its group.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".adapters.image." in n}
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=ids, adapter_groups=torch.zeros_like(groups), group_adapters=["text", "image"]).logits.pow(
            2).mean().backward()
        optimizer.step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
