"""Adapter names are checked before anything is placed or written: torch's own module attributes, and names too long
to become a folder when saved."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

import peftlab


def base() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))


@pytest.mark.parametrize("name", ["training", "_modules", "_parameters", "_buffers", "_forward_hooks"])
def test_names_of_torch_module_attributes_are_refused(name: str) -> None:
    model = peftlab.adapt(base(), peftlab.LoRA(r=2, targets=["0"]))
    structure = repr(model)
    with pytest.raises(peftlab.AdapterStateError, match=f"adapter name '{name}' is the name of a torch module"):
        model.add_adapter(name, peftlab.LoRA(r=2, targets=["0", "1"]))
    assert repr(model) == structure and model.adapters == ["default"]


def test_a_name_too_long_for_a_folder_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    model = peftlab.adapt(base(), peftlab.LoRA(r=2, targets=["0"]))
    with pytest.raises(peftlab.AdapterStateError, match=r"is 300 bytes long; at most 128 are allowed, as a saved "
                                                       r"adapter gets a folder of that name"):
        model.add_adapter("a" * 300, peftlab.LoRA(r=2, targets=["1"]))
    model.add_adapter("b" * 128, peftlab.LoRA(r=2, targets=["1"]))
    model.save(tmp_path)
    assert (tmp_path / ("b" * 128) / "adapter_config.json").is_file()
