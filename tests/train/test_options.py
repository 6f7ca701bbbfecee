"""`peftlab train` settings: defaults, then the YAML file, then flags; --print-config writes a file that reads back
to the same settings; typos and wrong types are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftlab.cli import main
from peftlab.train.config import TrainConfigError
from peftlab.train.options import FIELDS, TrainOptions, read_yaml
from tests.train.conftest import options_for


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("data: sentiment\nsteps: 30\nbatch_size: 4\nmethod: {id: lora, r: 16, alpha: 32}\n"
                      "chat: true\n", encoding="utf-8")
    options = options_for("--config", str(config), "--steps", "7", "--no-chat")
    assert (options.data, options.steps, options.batch_size, options.chat) == ("sentiment", 7, 4, False)
    assert options.method == {"id": "lora", "r": 16, "alpha": 32}
    assert options.lr is None and options.save_every == TrainOptions().save_every
    assert options_for("--resume").resume == "must" and options_for("--restart").resume == "never"


def test_print_config_writes_a_complete_commented_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--print-config", "--data", "dialogue", "--steps", "12", "--lr", "2e-4"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n# ") >= len(FIELDS) and "# optimiser steps\nsteps: 12\n" in text
    path = tmp_path / "printed.yaml"
    path.write_text(text, encoding="utf-8")
    assert set(read_yaml(path)) == set(FIELDS)
    assert options_for("--config", str(path)) == options_for("--data", "dialogue", "--steps", "12", "--lr", "2e-4")


@pytest.mark.parametrize(("text", "message"), [
    ("setps: 3\n", "unknown setting 'setps'; did you mean 'steps'"),
    ("steps: many\n", "steps must be int, got 'many'"),
    ("- data\n", "must hold a mapping"),
    ("steps: 0\n", "steps must be an integer >= 1"),
])
def test_bad_settings_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TrainConfigError, match=message):
        options_for("--config", str(path))


def test_the_command_reports_bad_input_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path)]) == 2
    assert "no training data: pass --data" in capsys.readouterr().err
