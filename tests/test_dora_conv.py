"""DoRA at convolutions: the training path against Hugging Face PEFT's gradients and against the equation with dropout.

(Outputs, files both ways and merged weights against HF PEFT: test_hf_interop_lora.py, its conv DoRA cases; training,
merge/unmerge and saving like every method: test_contract.py.)
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftlab
from tests.tiny_models import MODELS

pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model

CONVNET = next(m for m in MODELS if m.name == "convnet")


def _trainable_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gradients of the adapter tensors, keyed by module path and tensor name, in both libraries' naming."""
    grads = {}
    for name, param in model.named_parameters():
        if param.requires_grad and param.grad is not None:
            key = name.removeprefix("base_model.").removeprefix("model.")
            for wrapper in (".adapters", ".default", ".base_layer"):
                key = key.replace(wrapper, "")
            key = key.replace("lora_magnitude_vector.weight", "lora_magnitude_vector")
            grads[key] = param.grad
    return grads


def test_dora_conv_gradients_match_hf(tmp_path: Path) -> None:
    """Same adapter (HF PEFT's file loaded into peftlab), same batch: the same gradient for A, B and the magnitude."""
    base = CONVNET.make(seed=0)
    hf = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=["conv1", "conv2"],
                                                        use_dora=True))
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for _, param in sorted(hf.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=g) * 0.1)
    hf.save_pretrained(tmp_path)
    ours = peftlab.load(copy.deepcopy(base), tmp_path)
    for model in (hf, ours):
        model.train()
        for module in model.modules():  # the adapter in training mode, the batch norm on its running statistics
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        CONVNET.run(model).pow(2).sum().backward()
    hf_grads, our_grads = _trainable_grads(hf), _trainable_grads(ours)
    assert sorted(our_grads) == sorted(hf_grads)
    assert any("lora_magnitude_vector" in key for key in our_grads)
    for key, grad in hf_grads.items():
        torch.testing.assert_close(our_grads[key], grad, atol=1e-5, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


def test_dora_conv_dropout_is_the_equation() -> None:
    """With dropout, y = W * x + b + (s − 1) ⊙ (W * x') + s ⊙ c · B * (A * x'), s = m / ‖W + c·BA‖ per
    channel, where x' is the dropped input (Hugging Face PEFT's definition; * is the convolution)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = peftlab.adapt(nn.Sequential(conv), peftlab.DoRA(r=2, alpha=4, targets=["0"], dropout=0.3, init="random"))
    site, _ = model.site_adapters("default")["0"]
    with torch.no_grad():
        site.lora_magnitude_vector.mul_(1.3)  # away from the initial norm, so that s − 1 is not zero
    x = torch.randn(2, 3, 6, 6)
    model.train()
    torch.manual_seed(5)
    got = model(x)
    torch.manual_seed(5)
    dropped = F.dropout(x, 0.3, training=True)  # the same draw as the site's nn.Dropout
    delta = (site.lora_B.weight.flatten(1) @ site.lora_A.weight.flatten(1)).view_as(conv.weight) * site.scaling
    norm = torch.linalg.vector_norm(conv.weight + delta, dim=(1, 2, 3)).view(1, -1, 1, 1)
    s = site.lora_magnitude_vector / norm
    low_rank = F.conv2d(F.conv2d(dropped, site.lora_A.weight, padding=1), site.lora_B.weight) * site.scaling
    expected = conv(x) + (s - 1) * F.conv2d(dropped, conv.weight, padding=1) + s * low_rank
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dora_grouped_conv_is_refused_at_config_time() -> None:
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(peftlab.TargetError, match=r"cannot adapt '0' \(Conv2d, groups=2\).*peftlab has no DoRA"):
        peftlab.adapt(grouped, peftlab.DoRA(targets=["0"]))
