"""(IA)³ files exchanged with Hugging Face PEFT, both ways, on tiny models built from configs.

The same checks as the LoRA interop tests (whose helpers we reuse): from one seeded base model, an adapter saved by
one library loads in the other with equal outputs (float32, within 1e-5), re-saving writes the same tensors under the
same keys, and merge_and_unload gives the same plain weights. Every vector is moved off its initial ones first.
Cases cover each architecture's default targets (with BERT's attention.output.dense counted as feed-forward, as
Hugging Face PEFT does), GPT-2's transposed Conv1D, convolutions, a classification head, and a regex feedforward.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import peftlab
from tests.test_hf_interop_lora import BERT, CONVNET, GPT2, LLAMA, _base, _outputs, _perturb, _same_model, _same_tensors
from tests.tiny_models import TinyModel

pytest.importorskip("peft")
from peft import IA3Config, PeftModel, get_peft_model


@dataclass(frozen=True)
class Case:
    """One adapter, described once for each library. `hf` holds IA3Config keyword arguments."""

    id: str
    tiny: TinyModel
    hf: dict[str, Any]
    ours: Callable[[], peftlab.MethodConfig]


KVO = ["key", "value", "output.dense"]
FFN_OUT = r".*\.layer\.\d+\.output\.dense"  # the feed-forward output only, not attention.output.dense
CASES = [
    Case("bert-default", BERT, {}, lambda: peftlab.IA3(modules_to_save=[])),
    Case("gpt2-default-conv1d", GPT2, {}, lambda: peftlab.IA3()),
    Case("llama-default", LLAMA, {}, lambda: peftlab.IA3()),
    Case("bert-head-custom", BERT,
         dict(target_modules=["query", "value", "intermediate.dense"], feedforward_modules=["intermediate.dense"],
              task_type="SEQ_CLS"),
         lambda: peftlab.IA3(targets=["query", "value", "intermediate.dense"], feedforward=["intermediate.dense"])),
    Case("bert-regex-feedforward", BERT, dict(target_modules=KVO, feedforward_modules=FFN_OUT),
         lambda: peftlab.IA3(targets=KVO, feedforward=FFN_OUT, modules_to_save=[])),
    Case("convnet-conv2d", CONVNET, dict(target_modules=["conv1", "conv2", "fc"], feedforward_modules=["conv2", "fc"]),
         lambda: peftlab.IA3(targets=["conv1", "conv2", "fc"], feedforward=["conv2", "fc"])),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hf_saved_ia3_loads_in_peftlab(case: Case, tmp_path: Path) -> None:
    base = _base(case.tiny)
    with torch.no_grad():
        base_out = _outputs(case.tiny, base)
    hf = get_peft_model(copy.deepcopy(base), IA3Config(**case.hf))
    _perturb(hf)
    hf.save_pretrained(tmp_path / "hf")

    ours = peftlab.load(copy.deepcopy(base), tmp_path / "hf")
    assert type(ours.configs["default"]) is peftlab.IA3
    ours.save(tmp_path / "ours")
    _same_tensors(tmp_path / "hf", tmp_path / "ours")
    _same_model(hf, ours, case.tiny, base_out)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_peftlab_saved_ia3_loads_in_hf(case: Case, tmp_path: Path) -> None:
    base = _base(case.tiny)
    with torch.no_grad():
        base_out = _outputs(case.tiny, base)
    ours = peftlab.adapt(copy.deepcopy(base), case.ours())
    _perturb(ours)
    ours.save(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert written["peft_type"] == "IA3"
    assert set(written) <= {f.name for f in dataclasses.fields(IA3Config)}, "keys Hugging Face PEFT does not know"
    assert written["fan_in_fan_out"] == (case.tiny is GPT2)  # true exactly for GPT-2's Conv1D sites

    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    hf.save_pretrained(tmp_path / "hf")
    _same_tensors(tmp_path / "ours", tmp_path / "hf")
    _same_model(hf, ours, case.tiny, base_out)


def _feedforward_flags(model: nn.Module) -> dict[str, bool]:
    if isinstance(model, peftlab.AdaptedModel):
        return {p: site.feedforward for p, (site, _) in model.site_adapters("default").items()
                if hasattr(site, "ia3_l")}
    return {n.removeprefix("base_model.model."): m.is_feedforward for n, m in model.named_modules()
            if hasattr(m, "is_feedforward")}


def test_sites_and_feedforward_match_hf() -> None:
    """Default and custom targets pick the same modules, each scaling its input or output, in both libraries."""
    for case in CASES:
        base = _base(case.tiny)
        hf = get_peft_model(copy.deepcopy(base), IA3Config(**case.hf))
        ours = peftlab.adapt(copy.deepcopy(base), case.ours())
        assert _feedforward_flags(ours) == _feedforward_flags(hf), case.id
    bert = peftlab.adapt(_base(BERT), peftlab.IA3())
    flags = _feedforward_flags(bert)
    assert flags["bert.encoder.layer.0.attention.self.key"] is False
    assert flags["bert.encoder.layer.0.output.dense"] is True


def test_ia3_is_identity_at_init_and_scales_as_its_equation() -> None:
    base = _base(BERT)
    with torch.no_grad():
        expected = _outputs(BERT, base)
    model = peftlab.adapt(copy.deepcopy(base), peftlab.IA3(modules_to_save=[]))
    sites = model.site_adapters("default")
    # One vector per site: d_out = 32 for key/value, d_in = 32 or 64 at the feed-forward sites (attention/FFN output).
    assert model.trainable_parameters() == 2 * (32 + 32 + 32 + 64)
    with torch.no_grad():
        torch.testing.assert_close(_outputs(BERT, model), expected, atol=0, rtol=0)
        site, module = sites["bert.encoder.layer.0.attention.self.value"]
        site.ia3_l.fill_(2.0)
        x = torch.randn(3, 32)
        torch.testing.assert_close(model.base_model.bert.encoder.layer[0].attention.self.value(x), 2 * module(x))
        site, module = sites["bert.encoder.layer.0.output.dense"]
        site.ia3_l.copy_(torch.linspace(0, 1, 64).view(1, 64))
        h = torch.randn(3, 64)
        torch.testing.assert_close(model.base_model.bert.encoder.layer[0].output.dense(h),
                                   module(h * torch.linspace(0, 1, 64)))


def test_unmerge_restores_weights_with_zero_entries() -> None:
    """A zero in the vector cannot be divided out: the site keeps the originals, and unmerge restores them."""
    base = _base(BERT)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = peftlab.adapt(base, peftlab.IA3(modules_to_save=[]))
    with torch.no_grad():
        for site, _ in model.site_adapters("default").values():
            site.ia3_l.uniform_(0.5, 1.5).view(-1)[0] = 0.0
        unmerged = _outputs(BERT, model)
        model.merge_adapter()
        merged_out = _outputs(BERT, model)
        model.unmerge()
    torch.testing.assert_close(merged_out, unmerged, atol=1e-5, rtol=0)
    after = model.unload().state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, atol=0, rtol=0)


def test_ia3_default_targets_need_a_known_architecture() -> None:
    from tests.tiny_models import MLP

    with pytest.raises(peftlab.TargetError, match="no default targets for MLP.*pass targets"):
        peftlab.adapt(MLP(), peftlab.IA3())
    with pytest.raises(peftlab.ConfigError, match="subset of the targets"):
        peftlab.IA3(targets=["key"], feedforward=["output.dense"])
