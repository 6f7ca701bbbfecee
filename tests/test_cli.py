"""The `peftlab` command's library subcommands: methods and info."""

from __future__ import annotations

from pathlib import Path

import pytest

import peftlab
from peftlab.cli import main
from tests.tiny_models import tiny_bert


def test_methods_lists_every_registered_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert all(f"| {peftlab.get_method(m).card.name} |" in table for m in peftlab.methods())


def test_info_names_the_modules_the_folder_adapts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    peftlab.adapt(tiny_bert(), peftlab.LoRA(r=2)).save(tmp_path)  # default targets: the file resolves them
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("LoRA (lora, weight delta, mergeable: yes)") and "  r: 2" in out
    assert "adapted modules in this folder (4): bert.encoder.layer.0.attention.self.query" in out
    assert "trained in full (modules_to_save): classifier" in out


def test_info_on_a_folder_that_is_not_an_adapter_is_a_one_line_error(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("peftlab: error: ")
