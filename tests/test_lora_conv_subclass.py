"""LoRA and DoRA on a Conv2d subclass that pads its input itself (EfficientNet's TensorFlow-style "same"
convolution)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftlab


class SamePaddingConv(nn.Conv2d):
    """Pads like TensorFlow's SAME before a padding-free convolution (as efficientnet_lite_pytorch does)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, image_size: int) -> None:
        super().__init__(cin, cout, k, stride, padding=0)
        out = math.ceil(image_size / stride)
        pad = max((out - 1) * stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


@pytest.mark.parametrize("method", [peftlab.LoRA, peftlab.DoRA], ids=["lora", "dora"])
def test_lora_on_a_padding_conv_subclass_is_exact(method: type[peftlab.LoRA]) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(SamePaddingConv(3, 6, 3, 2, 9), nn.ReLU(), SamePaddingConv(6, 4, 3, 1, 5))
    x = torch.randn(2, 3, 9, 9)
    model = peftlab.adapt(net, method(r=2, targets=["0", "2"], init="random"))
    with torch.no_grad():
        adapted = model(x)
        model.merge_adapter()
        merged = model(x)
    torch.testing.assert_close(adapted, merged, atol=1e-5, rtol=1e-5)
    model.unmerge()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
