"""Checkpoint folders: a torn one (a file cut short or changed, the manifest missing, a staging folder left by a kill)
is never loaded, the one before it is; another run's checkpoint is refused by name; nothing is pickled."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from peftlab.train.checkpoint import CheckpointError, latest_checkpoint, verify
from peftlab.train.command import run_train
from tests.train.conftest import options_for


def _flags(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", "tiny-bert", "--method", "lora:r=2", "--steps", "6", "--batch-size", "4",
            "--save-every", "2", "--keep-checkpoints", "3", "--no-progress", "--device", "cpu", "--out", str(out),
            *extra]


@pytest.fixture
def trained(tmp_path: Path, labelled_file: Path) -> Path:
    run_train(options_for(*_flags(labelled_file, tmp_path / "run")))
    return tmp_path / "run"


def test_torn_checkpoints_are_skipped(trained: Path) -> None:
    root = trained / "checkpoints"
    assert [p.name for p in sorted(root.iterdir())] == ["step-00000002", "step-00000004", "step-00000006"]
    assert latest_checkpoint(root).name == "step-00000006"
    assert {p.suffix for p in root.rglob("*") if p.is_file()} == {".json", ".safetensors"}  # no pickle anywhere
    shutil.copytree(root / "step-00000006", root / ".step-00000008.tmp123")  # a kill while writing step 8
    weights = root / "step-00000006" / "state.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # cut short
    assert verify(root / "step-00000006") is None
    assert latest_checkpoint(root).name == "step-00000004"
    adapter = root / "step-00000004" / "adapter" / "adapter_model.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-1] ^= 1  # one bit of a weight changed, same size
    adapter.write_bytes(bytes(data))
    assert latest_checkpoint(root).name == "step-00000002"
    (root / "step-00000002" / "checkpoint.json").unlink()
    assert latest_checkpoint(root) is None


def test_resume_uses_the_last_complete_checkpoint_and_refuses_another_runs(trained: Path,
                                                                          labelled_file: Path) -> None:
    root = trained / "checkpoints"
    weights = root / "step-00000006" / "state.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    outcome = run_train(options_for(*_flags(labelled_file, trained)))
    assert outcome.start_step == 4 and len(outcome.result.losses) == 2
    assert verify(root / "step-00000006") is not None  # written anew
    with pytest.raises(CheckpointError, match=r"lr: 0\.005 there, 0\.001 now.*--restart"):
        run_train(options_for(*_flags(labelled_file, trained, "--lr", "1e-3")))
    fresh = run_train(options_for(*_flags(labelled_file, trained, "--lr", "1e-3", "--restart")))
    assert fresh.start_step == 0


def test_resume_must_find_a_checkpoint(tmp_path: Path, labelled_file: Path) -> None:
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        run_train(options_for(*_flags(labelled_file, tmp_path / "none", "--resume")))
