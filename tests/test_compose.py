"""add_weighted_adapter: combined adapters against Hugging Face PEFT's add_weighted_adapter and against the equations.

For each combination rule, both libraries hold the same two adapters (written by HF PEFT, read by peftlab), combine
them with the same weights, and must give the same outputs within 1e-5 (float32). DARE draws at random, so it is
checked by its equation instead: density 1 is the linear rule, and a seed fixes the draw.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import peftlab
from peftlab.compose.low_rank import LowRank, concatenate, truncated_svd
from peftlab.compose.merging import merge, trim
from peftlab.io.adapter_files import adapter_tensors
from tests.tiny_models import MODELS, TinyModel

pytest.importorskip("peft")
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model

TINY = {m.name: m for m in MODELS}
BERT, GPT2, CONVNET = TINY["bert"], TINY["gpt2"], TINY["convnet"]
ATOL = 1e-5
WEIGHTS = [0.7, -0.4]


def both_libraries(tiny: TinyModel, configs: dict[str, Any], tmp_path: Path) -> tuple[Any, peftlab.AdaptedModel]:
    """HF PEFT and peftlab models holding the same adapters (random A and B, written by HF PEFT)."""
    base = tiny.make()
    torch.manual_seed(1)
    names = list(configs)
    hf = get_peft_model(copy.deepcopy(base), configs[names[0]], adapter_name=names[0])
    for name in names[1:]:
        hf.add_adapter(name, configs[name])
    hf.save_pretrained(tmp_path / "hf", selected_adapters=names)
    ours = peftlab.load(copy.deepcopy(base), tmp_path / "hf" / names[0], names[0])
    for name in names[1:]:
        ours.load_adapter(tmp_path / "hf" / name, name)
    return hf.eval(), ours.eval()


def combined_outputs(tiny: TinyModel, hf: Any, ours: peftlab.AdaptedModel, weights: list[float] = WEIGHTS,
                     **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    hf.add_weighted_adapter(["one", "two"], weights, "mix", **options)
    hf.set_adapter("mix")
    ours.add_weighted_adapter(["one", "two"], weights, "mix", **options)
    ours.set_adapter("mix")
    with torch.no_grad():
        return tiny.run(hf), tiny.run(ours)


def lora(**fields: Any) -> LoraConfig:
    return LoraConfig(init_lora_weights=False, **fields)


# Two BERT adapters of different ranks, scalings and sites: q,v at r=4 and q,k at r=2 with rsLoRA.
MIXED = {"one": lora(r=4, lora_alpha=8, target_modules=["query", "value"]),
         "two": lora(r=2, lora_alpha=3, use_rslora=True, target_modules=["query", "key"])}
SAME_RANK = {"one": lora(r=4, lora_alpha=8, target_modules=["query", "value"]),
             "two": lora(r=4, lora_alpha=2, target_modules=["query", "value"])}


@pytest.mark.parametrize(("options", "configs"), [
    (dict(combination_type="cat"), MIXED),
    (dict(combination_type="svd"), MIXED),
    (dict(combination_type="svd", svd_rank=3), MIXED),
    (dict(combination_type="svd", svd_clamp=0.9), MIXED),
    (dict(combination_type="ties_svd", density=0.5), MIXED),
    (dict(combination_type="ties_svd", density=0.5, majority_sign_method="frequency"), MIXED),
    (dict(combination_type="magnitude_prune_svd", density=0.3), MIXED),
    (dict(combination_type="linear"), SAME_RANK),
    (dict(combination_type="ties", density=0.5), SAME_RANK),
    (dict(combination_type="magnitude_prune", density=0.6), SAME_RANK),
], ids=["cat", "svd", "svd-rank3", "svd-clamp", "ties_svd", "ties_svd-frequency", "magnitude_prune_svd", "linear",
        "ties", "magnitude_prune"])
def test_lora_combination_matches_hf(options: dict[str, Any], configs: dict[str, Any], tmp_path: Path) -> None:
    hf, ours = both_libraries(BERT, configs, tmp_path)
    expected, got = combined_outputs(BERT, hf, ours, **options)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("tiny", "configs"), [
    (GPT2, {"one": lora(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True),
            "two": lora(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)}),
    (CONVNET, {"one": lora(r=2, lora_alpha=4, target_modules=["conv1", "conv2"]),
               "two": lora(r=3, lora_alpha=3, target_modules=["conv2", "fc"])}),
    (GPT2, {"one": lora(r=4, lora_alpha=8, target_modules=["wte"]),
            "two": lora(r=2, lora_alpha=2, target_modules=["wte"])}),
], ids=["gpt2-conv1d", "conv2d", "embedding"])
@pytest.mark.parametrize("how", ["cat", "svd"])
def test_lora_combination_matches_hf_on_other_layers(tiny: TinyModel, configs: dict[str, Any], how: str,
                                                     tmp_path: Path) -> None:
    hf, ours = both_libraries(tiny, configs, tmp_path)
    expected, got = combined_outputs(tiny, hf, ours, combination_type=how)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_ia3_linear_matches_hf_when_the_weights_sum_to_one(tmp_path: Path) -> None:
    """HF PEFT's IA3 rule is Σ w_i l_i; ours, 1 + Σ w_i (l_i − 1): the same when Σ w_i = 1."""
    configs = {name: IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"],
                               init_ia3_weights=False) for name in ("one", "two")}
    hf, ours = both_libraries(BERT, configs, tmp_path)
    expected, got = combined_outputs(BERT, hf, ours, weights=[0.7, 0.3])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_negation_follows_the_composition_paper_for_every_method_that_has_it() -> None:
    """Zhang et al. 2023: negating IA3 maps l to 2 − l, LoRA flips B (ΔW -> −ΔW); BitFit, sparse, VeRA, bottleneck
    adapters negate their effect parameter; the other parameters stay; the rule is θ = ν + Σ w_i (θ_i − ν)."""
    torch.manual_seed(0)
    cases = {"ia3": (peftlab.IA3(modules_to_save=[]), {"ia3_l": 1.0}),
             "bitfit": (peftlab.BitFit(modules_to_save=[]), {"bias_delta": 0.0}),
             "vera": (peftlab.VeRA(r=4, modules_to_save=[]), {"vera_lambda_b": 0.0}),
             "adapter": (peftlab.Adapter(bottleneck=4, modules_to_save=[]),
                         {"adapter_up.weight": 0.0, "adapter_up.bias": 0.0}),
             "sparse": (peftlab.SparseFT(pruning=0.9, modules_to_save=[]), {"sparse_values": 0.0})}
    for method, (config, effects) in cases.items():
        model = peftlab.adapt(BERT.make(), config, "one")
        model.add_adapter("two", config)
        for name in ("one", "two"):
            model.set_adapter(name)
            with torch.no_grad():
                for param in model.adapter(name).parameters():
                    param.add_(torch.randn_like(param) * 0.1)
        model.add_weighted_adapter("one", [-1.0], "negated")
        model.add_weighted_adapter(["one", "two"], WEIGHTS, "mix")
        for path, entry in model.adapter("negated").sites.items():
            one, two = (dict(model.adapter(n).sites[path].site.named_parameters()) for n in ("one", "two"))
            assert type(entry.site).effect_parameters == effects
            for key, value in entry.site.named_parameters():
                neutral = effects.get(key)
                expected = 2 * neutral - one[key] if neutral is not None else one[key]
                torch.testing.assert_close(value, expected, msg=lambda m, k=key, md=method: f"{md} {k}: {m}")
                mixed = dict(model.adapter("mix").sites[path].site.named_parameters())[key]
                if neutral is not None:
                    expected = neutral + WEIGHTS[0] * (one[key] - neutral) + WEIGHTS[1] * (two[key] - neutral)
                else:
                    expected = (0.7 * one[key] + 0.4 * two[key]) / 1.1
                torch.testing.assert_close(mixed, expected, msg=lambda m, k=key, md=method: f"{md} mix {k}: {m}")
    lora = peftlab.adapt(BERT.make(), peftlab.LoRA(r=2, init="random", modules_to_save=[]), "one")
    lora.add_weighted_adapter("one", [-1.0], "negated", combination_type="cat")
    for path, entry in lora.adapter("negated").sites.items():
        torch.testing.assert_close(entry.site.delta_weight(), -lora.adapter("one").sites[path].site.delta_weight())


def test_negation_is_refused_where_the_paper_does_not_define_it() -> None:
    for config in (peftlab.DoRA(r=2, modules_to_save=[]), peftlab.PromptTuning(num_virtual_tokens=2,
                                                                                  modules_to_save=[]),
                   peftlab.LoReFT(r=2, modules_to_save=[])):
        model = peftlab.adapt(BERT.make(), config, "one")
        with pytest.raises(peftlab.AdapterCombineError, match="negative weights negate an adapter, which is not "
                                                               f"defined for {config.card.name}"):
            model.add_weighted_adapter("one", [-1.0], "negated")
        assert model.adapters == ["one"]


def test_cat_is_the_exact_weighted_sum_of_updates(tmp_path: Path) -> None:
    """cat's update is Σ w_i ΔW_i at every site; the combined adapter's files give the same outputs in both
    libraries."""
    _, ours = both_libraries(BERT, MIXED, tmp_path)
    ours.add_weighted_adapter(["one", "two"], WEIGHTS, "mix", combination_type="cat")
    for path, (site, _) in ours.site_adapters("mix").items():
        expected = sum(w * ours.site_adapters(n)[path][0].delta_weight() for n, w in zip(("one", "two"), WEIGHTS)
                       if path in ours.site_adapters(n))
        torch.testing.assert_close(site.delta_weight(), expected, atol=1e-6, rtol=0)
    assert ours.configs["mix"].r == 6  # 4 + 2
    ours.set_adapter("mix")
    with torch.no_grad():
        out = BERT.run(ours)
    ours.save(tmp_path / "ours", adapter_names=["mix"])
    reloaded = peftlab.load(BERT.make(), tmp_path / "ours" / "mix").eval()
    in_hf = PeftModel.from_pretrained(BERT.make(), tmp_path / "ours" / "mix").eval()
    with torch.no_grad():
        torch.testing.assert_close(BERT.run(reloaded), out, atol=ATOL, rtol=0)
        torch.testing.assert_close(BERT.run(in_hf), out, atol=ATOL, rtol=0)


def test_negative_weight_removes_an_adapter(tmp_path: Path) -> None:
    """a + b − b behaves as a: task arithmetic's negation."""
    _, ours = both_libraries(BERT, MIXED, tmp_path)
    ours.add_weighted_adapter(["one", "two"], [1.0, 1.0], "sum", combination_type="cat")
    ours.add_weighted_adapter(["sum", "two"], [1.0, -1.0], "back", combination_type="cat")
    outputs = {}
    for name in ("one", "back"):
        ours.set_adapter(name)
        with torch.no_grad():
            outputs[name] = BERT.run(ours)
    torch.testing.assert_close(outputs["back"], outputs["one"], atol=ATOL, rtol=0)


def test_dare_is_seeded_and_density_one_is_linear(tmp_path: Path) -> None:
    _, ours = both_libraries(BERT, SAME_RANK, tmp_path)
    ours.add_weighted_adapter(["one", "two"], WEIGHTS, "linear", combination_type="linear")
    ours.add_weighted_adapter(["one", "two"], WEIGHTS, "full", combination_type="dare_linear", density=1.0)
    ours.add_weighted_adapter(["one", "two"], WEIGHTS, "d1", combination_type="dare_ties_svd", density=0.5, seed=3)
    ours.add_weighted_adapter(["one", "two"], WEIGHTS, "d2", combination_type="dare_ties_svd", density=0.5, seed=3)
    ours.add_weighted_adapter(["one", "two"], WEIGHTS, "d3", combination_type="dare_ties_svd", density=0.5, seed=4)
    state = {name: adapter_tensors(ours.adapter(name)) for name in ("linear", "full", "d1", "d2", "d3")}
    for key in state["linear"]:
        torch.testing.assert_close(state["full"][key], state["linear"][key])
    assert all(torch.equal(state["d1"][k], state["d2"][k]) for k in state["d1"])
    assert any(not torch.equal(state["d1"][k], state["d3"][k]) for k in state["d1"])


def test_drop_keeps_the_expectation() -> None:
    task = torch.randn(200, 200, generator=torch.Generator().manual_seed(0))
    merged = merge([task], [1.0], "dare_linear", density=0.25, generator=torch.Generator().manual_seed(1))
    kept = merged != 0
    assert 0.23 < kept.float().mean().item() < 0.27
    torch.testing.assert_close(merged[kept], task[kept] / 0.25)


def test_ties_elects_signs_and_averages_the_agreeing_tasks() -> None:
    """Entry by entry: trim to the top half, elect the sign of the sum, average the tasks that agree with it."""
    t1 = torch.tensor([3.0, -1.0, 2.0, 0.5])
    t2 = torch.tensor([-1.0, -4.0, 1.0, 0.1])
    assert torch.equal(trim(t1, 0.5), torch.tensor([3.0, 0.0, 2.0, 0.0]))
    merged = merge([t1, t2], [1.0, 2.0], "ties", density=0.5)
    # trimmed: t1 (3, 0, 2, 0), t2 (0, -4, 0, 0); signs elected: +, -, +, + (0 votes +)
    assert torch.equal(merged, torch.tensor([3.0, -8.0, 2.0, 0.0]))


def test_svd_is_the_best_low_rank_approximation() -> None:
    g = torch.Generator().manual_seed(0)
    parts = [LowRank(torch.randn(3, 10, generator=g), torch.randn(12, 3, generator=g), 0.5) for _ in range(2)]
    a, b = concatenate(parts, [1.0, 1.0], rank=6)
    exact = parts[0].delta() + parts[1].delta()
    torch.testing.assert_close(b @ a, exact, atol=1e-5, rtol=0)
    a4, b4 = truncated_svd(exact, 4)
    singular = torch.linalg.svdvals(exact)
    error = torch.linalg.matrix_norm(exact - b4 @ a4)
    torch.testing.assert_close(error, singular[4:].norm(), atol=1e-4, rtol=0)  # Eckart–Young
    a9, b9 = truncated_svd(exact, 9)  # more than the matrix's rank: zero-padded
    assert a9.shape == (9, 10) and b9.shape == (12, 9)


def test_generic_linear_averages_same_config_adapters() -> None:
    model = peftlab.adapt(BERT.make(), peftlab.BitFit(modules_to_save=[]), "a")
    model.add_adapter("b", peftlab.BitFit(modules_to_save=[]))
    with torch.no_grad():
        for name, value in (("a", 1.0), ("b", 3.0)):
            for site, _ in model.site_adapters(name).values():
                site.bias_delta.fill_(value)
    model.add_weighted_adapter(["a", "b"], [0.5, 0.25], "mix")
    for site, _ in model.site_adapters("mix").values():
        assert torch.allclose(site.bias_delta, torch.full_like(site.bias_delta, 1.25))
    assert model.active_adapters == ("a",)  # the combination is not activated


@pytest.mark.parametrize(("call", "message"), [
    (dict(adapters=["one", "nope"]), "no adapter named 'nope'"),
    (dict(adapters=["one", "one"]), "name one adapter twice"),
    (dict(weights=[1.0]), "2 adapters but 1 weights"),
    (dict(weights=[1.0, float("nan")]), "not a finite number"),
    (dict(adapter_name="one"), "exists already"),
    (dict(adapter_name="x y"), "not a plain identifier"),
    (dict(combination_type="mean"), "not available for LoRA"),
    (dict(combination_type="ties"), "needs density in (0, 1]"),
    (dict(combination_type="ties", density=0.5), "needs one rank"),
    (dict(combination_type="cat", density=0.5), "density applies to"),
    (dict(combination_type="cat", svd_rank=4), "svd_rank and svd_clamp apply"),
    (dict(combination_type="svd", svd_rank=0), "svd_rank must be an integer >= 1"),
    (dict(combination_type="ties_svd", density=0.5, majority_sign_method="most"), "majority_sign_method"),
])
def test_bad_combinations_fail_before_anything_is_added(call: dict[str, Any], message: str, tmp_path: Path) -> None:
    _, ours = both_libraries(BERT, MIXED, tmp_path)
    arguments = dict(adapters=["one", "two"], weights=WEIGHTS, adapter_name="mix") | call
    with pytest.raises(peftlab.PeftlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ours.add_weighted_adapter(**arguments)
    assert ours.adapters == ["one", "two"]


def test_methods_and_saved_heads_that_cannot_combine() -> None:
    model = peftlab.adapt(BERT.make(), peftlab.LoRA(r=2, targets=["query"]), "a")  # trains the classifier too
    model.add_adapter("b", peftlab.LoRA(r=2, targets=["value"]))
    with pytest.raises(peftlab.AdapterCombineError, match="each train their own copy of 'classifier'"):
        model.add_weighted_adapter(["a", "b"], WEIGHTS, "mix", combination_type="cat")
    model.add_adapter("c", peftlab.BitFit())
    with pytest.raises(peftlab.AdapterCombineError, match="different methods"):
        model.add_weighted_adapter(["a", "c"], WEIGHTS, "mix")
    model.add_adapter("d", peftlab.IA3(targets=["key"], modules_to_save=[]))
    model.add_adapter("e", peftlab.IA3(targets=["value"], modules_to_save=[]))
    with pytest.raises(peftlab.AdapterCombineError, match="differ in targets"):
        model.add_weighted_adapter(["d", "e"], WEIGHTS, "mix")
    assert model.adapters == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("config", [peftlab.DoRA(r=2, targets=["query"], init="random", modules_to_save=[]),
                                    peftlab.PromptTuning(num_virtual_tokens=3, modules_to_save=[])],
                         ids=["dora", "prompt"])
def test_linear_averages_every_tensor_of_the_adapter(config: peftlab.MethodConfig) -> None:
    """Site tensors (DoRA's A, B, magnitude) and model-level ones (prompt embeddings) alike: Σ |w_i| θ_i / Σ |w_i|."""
    model = peftlab.adapt(BERT.make(), config, "one")
    torch.manual_seed(5)
    model.add_adapter("two", config)
    model.add_weighted_adapter(["one", "two"], [0.6, 0.2], "mix")
    states = {name: adapter_tensors(model.adapter(name)) for name in ("one", "two", "mix")}
    assert states["mix"].keys() == states["one"].keys()
    for key, value in states["mix"].items():
        torch.testing.assert_close(value, 0.75 * states["one"][key] + 0.25 * states["two"][key])
