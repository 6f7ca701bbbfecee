"""An adapter folder's files are checked before any method reads them: adapter_config.json of the wrong JSON type,
not UTF-8, too large, a dangling symbolic link, weights without a config. Each is one peftlab error (for
`peftlab.load` and, without a traceback, for `peftlab info`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import peftlab
from peftlab.cli import main


def base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    peftlab.adapt(base(), peftlab.LoRA(r=2, targets=["0", "1"])).save(tmp_path / "adapter")
    return tmp_path / "adapter"


def refused(folder: Path, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """peftlab.load raises AdapterLoadError matching `message`, and `peftlab info` says it in one line."""
    with pytest.raises(peftlab.AdapterLoadError, match=message):
        peftlab.load(base(), folder)
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("peftlab: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(("content", "message"), [
    (b"[1, 2]", "holds a list, not a JSON object"),
    (b"null", "holds null, not a JSON object"),
    (b'"LORA"', "holds a string, not a JSON object"),
    (b"8", "holds a number, not a JSON object"),
    (b'{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["0"], "x": "\xe9t\xe9"}',
     r"is not UTF-8 text \(byte 78"),
    (b'{"r": 4}', '"peft_type" is None; it must name the method as a string'),
    (b'{"peft_type": ["LORA"]}', r'"peft_type" is \[\'LORA\'\]'),
    (b'{"peft_type": "LORA", "r": 4', "is not valid JSON"),
    (b'{"peft_type": "LORA", "r": 4, "rank_pattern": [1]}', r"rank_pattern=\[1\] must be a dict"),
    (b'{"peft_type": "LORA", "r": 4, "target_modules": 7}', "wrong type|targets"),
    (b'{"peft_type": "PROMPT_TUNING"}', "the field 'num_virtual_tokens' is missing"),
    (b'{"peft_type": "IA3", "target_modules": ["0"], "feedforward_modules": 3}', "wrong type|feedforward"),
    (b'{"peft_type": "LORA", "r": 1' + b"0" * 5000 + b"}", "is not valid JSON"),
])
def test_a_config_that_is_not_an_adapter_config_object_is_refused(folder: Path, content: bytes, message: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "adapter_config.json").write_bytes(content)
    refused(folder, message, capsys)


def test_a_config_file_of_many_megabytes_is_refused_unread(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "adapter_config.json").write_bytes(b'{"peft_type": "LORA", "pad": "' + b"x" * (17 * 2**20) + b'"}')
    refused(folder, "bytes; an adapter config is a few kB", capsys)


def test_a_dangling_symbolic_link_is_named_as_such(folder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.rename(tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "gone.safetensors", weights)
    refused(folder, "adapter_model.safetensors is a symbolic link to .*gone.safetensors, which does not exist",
            capsys)
    weights.unlink()
    os.symlink(tmp_path / "elsewhere.safetensors", weights)  # a link to a real file is followed
    peftlab.load(base(), folder)


def test_weights_without_their_config_say_the_save_did_not_finish(folder: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "adapter_config.json").unlink()
    refused(folder, "has adapter_model.safetensors but no adapter_config.json: the save that wrote it did not finish",
            capsys)


def test_info_says_where_the_config_comes_from(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(folder)]) == 0
    assert "config read from adapter_config.json, confirmed by adapter_model.safetensors" in capsys.readouterr().out
    data = json.loads((folder / "adapter_config.json").read_text())
    data["lora_alpha"] = 64
    (folder / "adapter_config.json").write_text(json.dumps(data))
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "config read from adapter_config.json, edited after peftlab saved the folder" in out
    assert "alpha: 64" in out
