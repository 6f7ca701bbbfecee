"""Tiny models built in the tests: real architectures from configs, random weights, seeded. No mocks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(self.norm(torch.relu(self.fc1(x))))))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))  # (B, 8, H/2, W/2)
        return self.fc(h.mean(dim=(2, 3)))  # (B, 8) -> (B, 5)


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(config)


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config)


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=64, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1)
    return LlamaForCausalLM(config)


@dataclass(frozen=True)
class TinyModel:
    """A named model factory plus a fixed input batch and how to read its output as one tensor."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], dict[str, Any]]

    def make(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.build().eval()

    def run(self, model: nn.Module) -> torch.Tensor:
        out = model(**self.inputs())
        return out if isinstance(out, torch.Tensor) else out.logits


def _token_batch() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 100, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0  # the second row is padded on the right
    return {"input_ids": ids, "attention_mask": mask}


MODELS = [
    TinyModel("mlp", MLP, lambda: {"x": torch.randn(4, 16, generator=torch.Generator().manual_seed(1))}),
    TinyModel("convnet", ConvNet, lambda: {"x": torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))}),
    TinyModel("bert", tiny_bert, _token_batch),
    TinyModel("gpt2", tiny_gpt2, _token_batch),
]
