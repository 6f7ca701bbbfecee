"""Target selection semantics: names/suffixes, regex, types, all-linear, layers, exclusions, and clear errors."""

from __future__ import annotations

import pytest
import torch

import peftlab
from tests.tiny_models import ConvNet, tiny_bert, tiny_gpt2


def _sites(model: peftlab.AdaptedModel) -> set[str]:
    return {p for p, k in model.site_kinds("default").items() if k == "method"}


def test_suffix_names_match_at_dot_boundaries() -> None:
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA(targets=["query", "attention.output.dense"]))
    assert _sites(model) == {f"bert.encoder.layer.{i}.{m}" for i in (0, 1)
                             for m in ("attention.self.query", "attention.output.dense")}


def test_regex_is_a_full_match() -> None:
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA(targets=r".*\.layer\.1\..*\.(key|value)"))
    assert _sites(model) == {"bert.encoder.layer.1.attention.self.key", "bert.encoder.layer.1.attention.self.value"}
    with pytest.raises(peftlab.TargetError):
        peftlab.adapt(tiny_bert(), peftlab.LoRA(targets=r"query"))  # no module is named exactly "query"


def test_all_linear_excludes_the_head() -> None:
    model = peftlab.adapt(tiny_gpt2(), peftlab.LoRA(targets="all-linear"))
    sites = _sites(model)
    assert "lm_head" not in sites and "transformer.h.0.attn.c_attn" in sites and len(sites) == 8
    bert = peftlab.adapt(tiny_bert(), peftlab.LoRA(targets="all-linear"))
    assert not any(s.startswith("classifier") for s in _sites(bert))


def test_types_layers_and_exclusions() -> None:
    convs = peftlab.adapt(ConvNet(), peftlab.LoRA(target_types=("Conv2d",)))
    assert _sites(convs) == {"conv1", "conv2"}

    class SamePaddingConv(torch.nn.Conv2d):  # as EfficientNet's Conv2dStaticSamePadding
        pass

    net = torch.nn.Sequential(SamePaddingConv(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1))
    assert _sites(peftlab.adapt(net, peftlab.LoRA(target_types=("Conv2d",)))) == {"0", "2"}  # subclasses too
    only_layer_0 = peftlab.adapt(tiny_bert(), peftlab.LoRA(targets=["query", "value"], layers=[0]))
    assert _sites(only_layer_0) == {"bert.encoder.layer.0.attention.self.query",
                                    "bert.encoder.layer.0.attention.self.value"}
    excluded = peftlab.adapt(tiny_bert(), peftlab.LoRA(targets="all-linear", exclude=["key", "output.dense"]))
    assert not any(s.endswith((".key", "output.dense")) for s in _sites(excluded))


def test_nothing_matched_lists_the_closest_names() -> None:
    with pytest.raises(peftlab.TargetError, match="q_proj.*Closest module names.*query"):
        peftlab.adapt(tiny_bert(), peftlab.LoRA(targets=["q_proj", "querry"]))


def test_unsupported_module_type_is_refused_with_what_to_name() -> None:
    with pytest.raises(peftlab.TargetError, match="cannot adapt 'bert.encoder.layer.0.attention'.*BertAttention"):
        peftlab.adapt(tiny_bert(), peftlab.LoRA(targets=["attention"]))


def test_default_targets_and_auto_head() -> None:
    model = peftlab.adapt(tiny_bert(), peftlab.LoRA())
    kinds = model.site_kinds("default")
    assert kinds["classifier"] == "saved"
    assert {p for p, k in kinds.items() if k == "method"} == {
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")}
    no_head = peftlab.adapt(tiny_bert(), peftlab.LoRA(modules_to_save=[]))
    assert "classifier" not in no_head.site_kinds("default")


def test_targets_that_are_all_trained_in_full_say_so() -> None:
    with pytest.raises(peftlab.TargetError, match="match only modules that modules_to_save trains in full"):
        peftlab.adapt(tiny_bert(), peftlab.LoRA(targets=["query"], modules_to_save=["query"]))
