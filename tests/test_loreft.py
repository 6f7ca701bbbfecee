"""LoReFT and DiReFT: the equations checked with R, W, b set by hand, the positions, and R's orthonormality."""

from __future__ import annotations

import pytest
import torch

import peftlab
from peftlab.methods.loreft import ReFTSite
from tests.tiny_models import tiny_llama

D = 32  # tiny_llama's hidden size


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_llama().eval()


def _batch(left_padded: bool) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if left_padded:
        mask[1, :3] = 0
    else:
        mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _hand_set(model: peftlab.AdaptedModel, r: int, seed: int) -> dict[str, torch.Tensor]:
    """Put hand-made R (orthonormal rows), W and b into every site; returns them."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.linalg.qr(torch.randn(D, r, generator=g))[0].T  # (r, D), orthonormal rows
    state = {"proj.weight": rows, "source.weight": torch.randn(r, D, generator=g),
             "source.bias": torch.randn(r, generator=g)}
    for site, module in model.site_adapters("default").values():
        site.import_state(state, module)
    return state


def _block_io(model: peftlab.AdaptedModel, batch: dict[str, torch.Tensor], index: int) -> tuple[torch.Tensor, ...]:
    """(bare block output, adapted block output) of decoder layer `index` in one forward pass."""
    layer = model.base_model.model.layers[index]
    captured: dict[str, torch.Tensor] = {}
    hooks = [layer.base_layer.register_forward_hook(lambda m, a, out: captured.__setitem__("bare", out)),
             layer.register_forward_hook(lambda m, a, out: captured.__setitem__("adapted", out))]
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    return captured["bare"], captured["adapted"]


@pytest.mark.parametrize("left_padded", [False, True], ids=["right-padded", "left-padded"])
@pytest.mark.parametrize("variant", ["loreft", "direft"])
def test_equation_with_hand_set_tensors(variant: str, left_padded: bool) -> None:
    model = peftlab.adapt(_llama(), peftlab.LoReFT(r=3, positions="f1+l2", variant=variant, layers=[1]))
    state = _hand_set(model, r=3, seed=7)
    (site, _), = model.site_adapters("default").values()
    torch.testing.assert_close(site.proj.weight, state["proj.weight"], atol=1e-6, rtol=0)  # R ↦ R exactly
    batch = _batch(left_padded)
    h, edited = _block_io(model, batch, index=1)  # h: the block's own output (B, T, D)
    proj, w, b = state["proj.weight"], state["source.weight"], state["source.bias"]
    if variant == "loreft":
        expected = h + (h @ w.T + b - h @ proj.T) @ proj  # h + Rᵀ(Wh + b − Rh)
    else:
        expected = h + (h @ w.T + b) @ proj  # h + W₂ᵀ(W₁h + b)
    # first real token and last two real tokens of each row
    picked = [[0, 6, 7], [3, 6, 7]] if left_padded else [[0, 6, 7], [0, 3, 4]]
    selected = torch.zeros(2, 8, dtype=torch.bool)
    for row, cols in enumerate(picked):
        selected[row, cols] = True
    torch.testing.assert_close(edited[selected], expected[selected], atol=1e-5, rtol=1e-5)
    assert torch.equal(edited[~selected], h[~selected]), "positions outside f1+l2 must stay untouched"
    # Layer 0 is not adapted; the unedited run of layer 1 sees the same input, so disabling gives h back.
    with model.disable_adapters(), torch.no_grad():
        assert torch.equal(model(**batch).logits, _llama()(**batch).logits)


def test_r_stays_orthonormal_while_training() -> None:
    model = peftlab.adapt(_llama(), peftlab.LoReFT(r=4, positions="f2+l2"))
    sites = [site for site, _ in model.site_adapters("default").values()]
    before = [site.proj.weight.detach().clone() for site in sites]
    batch = _batch(left_padded=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)  # weight decay 0.01
    for _ in range(6):
        opt.zero_grad()
        model(**batch, labels=labels).loss.backward()
        opt.step()
    eye = torch.eye(4)
    for site, start in zip(sites, before):
        rows = site.proj.weight.detach()
        assert (rows - start).abs().max() > 1e-3, "R did not train"
        torch.testing.assert_close(rows @ rows.T, eye, atol=1e-5, rtol=0)


def test_positions_spec() -> None:
    assert peftlab.LoReFT(positions=(3, 0)).positions == "f3"
    assert peftlab.LoReFT(positions=[2, 5]).positions == "f2+l5"
    assert peftlab.LoReFT(positions=" l4 ").positions == "l4"
    config = peftlab.LoReFT(positions="f1+l7")
    assert (config.first, config.last) == (1, 7)
    assert peftlab.MethodConfig.from_dict(config.to_dict()) == config
    for bad in ("x1", "f1+", "f0+l0", (0, 0), (1, -1), "first"):
        with pytest.raises(peftlab.ConfigError, match="positions"):
            peftlab.LoReFT(positions=bad)
    with pytest.raises(peftlab.ConfigError, match="variant"):
        peftlab.LoReFT(variant="loreft2")


def test_only_the_chosen_layers_and_counts() -> None:
    model = peftlab.adapt(_llama(), peftlab.LoReFT(r=2, layers=[0]))
    assert list(model.site_kinds("default")) == ["model.layers.0"]
    assert model.trainable_parameters() == 2 * 2 * D + 2  # 2·r·d + r
    with pytest.raises(peftlab.AdapterStateError, match="not mergeable"):
        model.merge_adapter()
    with pytest.raises(peftlab.ConfigError, match="exceeds the hidden size"):
        peftlab.adapt(_llama(), peftlab.LoReFT(r=D + 1))


def test_site_is_a_plain_module_with_three_tensors() -> None:
    model = peftlab.adapt(_llama(), peftlab.LoReFT(r=2, layers=[1]))
    (site, module), = model.site_adapters("default").values()
    assert isinstance(site, ReFTSite)
    assert {k: tuple(v.shape) for k, v in site.export_state(module).items()} == {
        "proj.weight": (2, D), "source.weight": (2, D), "source.bias": (2,)}


def test_runs_after_casting_to_half_precision() -> None:
    """Casting the adapted model to bfloat16 casts R too; its QR runs in float32 (missing for bf16 on CPU)."""
    torch.manual_seed(0)
    model = peftlab.adapt(tiny_llama().eval(), peftlab.LoReFT(r=2)).to(torch.bfloat16)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
