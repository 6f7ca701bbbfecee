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
    assert all(f"| {peftlab.get_method(m).card.name} |" in table for m in peftlab.method_ids())


def test_the_readme_methods_table_is_the_generated_one(capsys: pytest.CaptureFixture[str]) -> None:
    """README.md's methods table is `peftlab methods --markdown`: regenerate it when a method changes."""
    assert main(["methods", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert table in readme, "README.md's methods table is stale: paste the output of `peftlab methods --markdown`"


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


def test_combine_writes_the_weighted_combination_of_two_folders(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`peftlab combine` = load base and adapters, add_weighted_adapter, save: same outputs as doing it in Python,
    and a negative weight is accepted on the command line."""
    import torch

    from tests.tiny_models import tiny_llama

    torch.manual_seed(0)
    tiny_llama().save_pretrained(tmp_path / "base")
    base = type(tiny_llama()).from_pretrained(tmp_path / "base").eval()
    for name, targets in (("a", ["q_proj"]), ("b", ["q_proj", "v_proj"])):
        peftlab.adapt(type(base).from_pretrained(tmp_path / "base"),
                      peftlab.LoRA(r=2, targets=targets, init="random")).save(tmp_path / name)
    code = main(["combine", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "0.5", "-1",
                 "--base", str(tmp_path / "base"), "--how", "cat", "--out", str(tmp_path / "mix")])
    assert code == 0 and "wrote" in capsys.readouterr().out
    expected = peftlab.load(base, tmp_path / "a", "a")
    expected.load_adapter(tmp_path / "b", "b")
    expected.add_weighted_adapter(["a", "b"], [0.5, -1.0], "mix", combination_type="cat")
    expected.set_adapter("mix")
    combined = peftlab.load(type(base).from_pretrained(tmp_path / "base").eval(), tmp_path / "mix")
    ids = torch.randint(2, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(combined(input_ids=ids).logits, expected(input_ids=ids).logits, atol=1e-5,
                                   rtol=0)
    assert main(["combine", str(tmp_path / "a"), "--base", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "is not a transformers model folder" in capsys.readouterr().err
