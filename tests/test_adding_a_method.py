"""Adding a method by following docs/adding-a-method.md only: a throwaway method (SSF, the page's worked example)
defined in this file, registered as a plug-in, joins the contract matrix, saves, loads, merges and appears in
`peftlab methods`; and the page's code is this file's code."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import peftlab
import tests.test_contract as contract
from peftlab.core.layer import BaseCall
from peftlab.core.sites import WeightDeltaSite
from tests.method_cases import NOT_APPLICABLE

DOC = Path(__file__).parents[1] / "docs" / "adding-a-method.md"


# --- the method, as docs/adding-a-method.md writes it ---
class SSFSite(WeightDeltaSite):
    """γ and β of one Linear layer (d_out each)."""

    def __init__(self, module: nn.Linear) -> None:
        super().__init__()
        self.ssf_scale = nn.Parameter(torch.ones(module.out_features))
        self.ssf_shift = nn.Parameter(torch.zeros(module.out_features))
        self._originals: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: Any, base: BaseCall) -> torch.Tensor:
        return base(x) * self.ssf_scale + self.ssf_shift

    def merge(self, module: nn.Module) -> None:
        self._originals = (module.weight.detach().clone(), module.bias.detach().clone())
        module.weight.mul_(self.ssf_scale.view(-1, 1))  # (d_out,) -> (d_out, 1): scales W's rows
        module.bias.mul_(self.ssf_scale).add_(self.ssf_shift)

    def unmerge(self, module: nn.Module) -> None:
        weight, bias = self._originals
        module.weight.copy_(weight)
        module.bias.copy_(bias)
        self._originals = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SSF(peftlab.MethodConfig):
    """SSF: a scale and a shift per output feature of every Linear layer with a bias (the head aside)."""

    card: ClassVar[peftlab.MethodCard] = peftlab.MethodCard(
        id="ssf", name="SSF", kind=peftlab.AttachKind.WEIGHT_DELTA, inserted_at="any linear layer with a bias",
        form="vector", integration="scale and shift", param_formula="2·d_out", mergeable=True,
        paper="Lian et al. 2022")
    study_lr: ClassVar[float] = 1e-2
    site_types: ClassVar[tuple] = (SSFSite,)

    def supports(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) and module.bias is not None

    def build_site(self, module: nn.Module, path: str, shared: nn.Module | None) -> SSFSite:
        return SSFSite(module)
# --- end of the method ---


@pytest.fixture
def ssf() -> Iterator[type[SSF]]:
    peftlab.register(SSF)
    try:
        yield SSF
    finally:
        peftlab.unregister("ssf")


def test_the_page_shows_this_files_code() -> None:
    page = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL).group(1)
    source = Path(__file__).read_text(encoding="utf-8")
    method = source.split("# --- the method, as docs/adding-a-method.md writes it ---\n", 1)[1]
    method = method.split("# --- end of the method ---", 1)[0]
    assert method.strip() in page


def test_a_registered_plugin_joins_the_contract_matrix(ssf: type, tmp_path: Path) -> None:
    assert "ssf" in peftlab.method_ids()
    fields = {"gpt2": (NOT_APPLICABLE, "GPT-2's linear layers are Conv1D")}
    contract.run_contract("ssf", lambda model: fields.get(model, {}), tmp_path)


def test_it_is_in_the_methods_table_and_the_study(ssf: type) -> None:
    from peftlab.cli import main
    from peftlab.study.methods import parse_method

    assert parse_method("ssf").lr == 1e-2
    assert main(["methods"]) == 0
    assert peftlab.config_for("ssf").to_dict()["method"] == "ssf"


def test_merging_folds_the_scale_and_shift_into_the_weights(ssf: type) -> None:
    from torch import nn

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    model = peftlab.adapt(base, SSF(targets=["0"]))
    site = model.adapter("default").sites["0"].site
    with torch.no_grad():
        site.ssf_scale.copy_(torch.tensor([2.0, -1.0, 0.5]))
        site.ssf_shift.copy_(torch.tensor([0.1, 0.2, 0.3]))
    weight, bias = base[0].weight.detach().clone(), base[0].bias.detach().clone()
    model.merge_adapter()
    merged = model.get_base_model()[0].base_layer
    torch.testing.assert_close(merged.weight, torch.diag(site.ssf_scale.detach()) @ weight)
    torch.testing.assert_close(merged.bias, site.ssf_scale.detach() * bias + site.ssf_shift.detach())
