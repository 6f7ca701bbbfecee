"""`kill -9` at random moments of a real `peftlab train` process, resumed each time by rerunning the same command,
ends with the adapter of an uninterrupted run (dropout in the base and the adapter: the RNG states are restored)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from peftlab.train.command import run_train
from tests.train.conftest import adapter_difference, options_for, subprocess_env

STEPS = 40


def _options(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--model", "tiny-bert", "--method", "lora:r=4:dropout=0.2", "--steps", str(STEPS),
            "--batch-size", "8", "--save-every", "1", "--eval-every", "10", "--threads", "1", "--no-progress",
            "--device", "cpu", "--out", str(out)]


def _last_step(out: Path) -> int:
    """The last step metrics.jsonl records (0 before the first)."""
    try:
        lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def test_sigkill_at_random_steps_then_resume_reaches_the_uninterrupted_adapter(tmp_path: Path,
                                                                                labelled_file: Path) -> None:
    reference = tmp_path / "reference"
    run_train(options_for(*_options(labelled_file, reference)))
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "peftlab", "train", *_options(labelled_file, killed)]
    rng = random.Random(20261205)
    kills, resumed_from = 0, []
    while kills < 3:
        target = _last_step(killed) + rng.randint(2, 8)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=subprocess_env())
        while process.poll() is None and _last_step(killed) < target:
            time.sleep(0.005)
        if process.poll() is not None:
            break  # the run finished before this target
        os.kill(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        assert process.returncode == -signal.SIGKILL
        kills += 1
        resumed_from += [line for line in err.splitlines() if "resuming from" in line]
    assert kills >= 3, f"only {kills} kills landed before the run ended"
    finished = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300,
                              check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(resumed_from) >= 2 and "resuming from" in finished.stderr
    assert adapter_difference(reference / "adapter", killed / "adapter") <= 1e-6
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "eval" not in r]
    assert steps == list(range(1, STEPS + 1))  # lines past a checkpoint were dropped on resume, none missing
