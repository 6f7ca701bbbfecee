"""`peftlab train` on two real processes (torchrun and accelerate launch, gloo on this CPU): DDP and FSDP train the
adapter one process trains with the same global batch, only the main process writes, and a two-process checkpoint
resumes on one process (with gradient accumulation standing in for the second process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab.train.command import run_train
from tests.train.conftest import adapter_difference, options_for, subprocess_env


def _flags(data: Path, out: Path) -> list[str]:
    # tiny-llama has no dropout: every process count computes the same numbers (up to summation order)
    return ["--data", str(data), "--model", "tiny-llama", "--method", "lora:r=4:alpha=8", "--steps", "8",
            "--batch-size", "8", "--max-length", "32", "--save-every", "4", "--keep-checkpoints", "3",
            "--eval-every", "4", "--threads", "1", "--no-progress", "--device", "cpu", "--out", str(out)]


def _launch(launcher: list[str], flags: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", *launcher, "-m", "peftlab", "train", *flags], capture_output=True,
                          text=True, timeout=600, env=subprocess_env(), check=False)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
    return done


TORCHRUN = ["torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One process, DDP and FSDP on two processes, all on the same data."""
    from tests.train.conftest import write_jsonl

    root = tmp_path_factory.mktemp("distributed")
    data = write_jsonl(root / "sums.jsonl", [{"prompt": f"{a}+{b}=", "completion": str(a + b)}
                                             for a in range(8) for b in range(6)])
    run_train(options_for(*_flags(data, root / "single")))
    ddp = _launch(TORCHRUN, _flags(data, root / "ddp"))
    assert "2 processes (ddp)" in ddp.stderr
    _launch(TORCHRUN, [*_flags(data, root / "fsdp"), "--parallel", "fsdp"])
    return {"data": data, "single": root / "single", "ddp": root / "ddp", "fsdp": root / "fsdp"}


def test_ddp_and_fsdp_on_two_processes_match_one_process(runs: dict[str, Path]) -> None:
    assert adapter_difference(runs["single"] / "adapter", runs["ddp"] / "adapter") <= 1e-5
    assert adapter_difference(runs["ddp"] / "adapter", runs["fsdp"] / "adapter") <= 1e-5
    for name in ("ddp", "fsdp"):  # one writer: every step is logged once, one final checkpoint per step
        records = [json.loads(line) for line in (runs[name] / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "eval" not in r] == list(range(1, 9))
        assert sorted(p.name for p in (runs[name] / "checkpoints").iterdir()) == ["step-00000004", "step-00000008"]


def test_a_two_process_checkpoint_resumes_on_one_process(runs: dict[str, Path], tmp_path: Path) -> None:
    for name in ("ddp", "fsdp"):
        out = tmp_path / name
        shutil.copytree(runs[name] / "checkpoints" / "step-00000004", out / "checkpoints" / "step-00000004")
        outcome = run_train(options_for(*_flags(runs["data"], out), "--accumulation", "2"))
        assert outcome.start_step == 4 and len(outcome.result.losses) == 4
        assert adapter_difference(out / "adapter", runs[name] / "adapter") <= 1e-5


def test_accelerate_launch_runs_the_same_command(runs: dict[str, Path], tmp_path: Path) -> None:
    """accelerate's torch.distributed launcher (named --multi_gpu, it also runs CPU processes) sets the same
    environment as torchrun."""
    launcher = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = _launch(launcher, _flags(runs["data"], tmp_path / "accelerate"))
    assert "2 processes (ddp)" in done.stderr
    assert adapter_difference(tmp_path / "accelerate" / "adapter", runs["ddp"] / "adapter") <= 1e-5
