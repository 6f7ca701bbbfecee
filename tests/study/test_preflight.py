"""What would fail every run of a study alike stops it before the first run starts, with the option to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peftlab.study.errors import StudyError
from peftlab.study.tasks.base import TaskSpec
from tests.study.conftest import MINI, run_cli


@pytest.mark.parametrize(("options", "message"), [
    (("--task", "missing.csv"), "data file missing.csv does not exist"),
    (("--task", "notes.txt"), "unknown task 'notes.txt'"),
    (("--model", "/no/such/model"), "model path /no/such/model does not exist"),
    (("--model", "tiny-llama"), "model 'tiny-llama' is not a text classifier; this task takes minilm, tiny-bert"),
    (("--task", "arithmetic", "--model", "tiny-bert"), "model 'tiny-bert' is not a causal language model"),
    (("--task", "image", "--model", "minilm"), "supports the model 'efficientnet-lite0', not 'minilm'"),
    (("--task", "image", "--image-size", "16"), "--image-size 16 is too small for EfficientNet-Lite0"),
    (("--max-length", "0"), "--max-length must be >= 1"),
    (("--max-length", "2000"), "--max-length 2000 is more than model 'tiny-bert' takes \\(512 positions\\)"),
    (("--warmup", "1.5"), r"warmup=1.5: a fraction of the steps in \[0, 1\)"),
    (("--eval-every", "-1"), "eval_every must be >= 0"),
    (("--lr", "lora=0"), "method 'lora': lr=0.0: the learning rate must be a positive finite number"),
    (("--device", "gpu"), "'gpu' is not a device name"),
])
def test_a_study_that_cannot_run_stops_before_its_first_run(tmp_path: Path, options: tuple[str, ...],
                                                            message: str) -> None:
    out = tmp_path / "study"
    own_model = "--model" in options or "image" in options
    args = [a for a in MINI if a not in ("--model", "tiny-bert")] if own_model else list(MINI)
    with pytest.raises(StudyError, match=message):
        run_cli("compare", *args, *options, "--methods", "lora", "--out", str(out))
    assert not out.exists()  # nothing started, nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_named_with_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="device 'cuda' is not available on this machine; available: cpu"):
        run_cli("compare", *MINI, "--device", "cuda", "--methods", "lora", "--out", str(tmp_path / "study"))


def test_task_spec_counts_are_checked_on_construction() -> None:
    with pytest.raises(StudyError, match="--test-size must be >= 1, got 0"):
        TaskSpec("sentiment", test_size=0)


@pytest.mark.parametrize(("options", "message"), [
    (("--methods", ","), "--methods is empty"),
    (("--methods", "lora", "--lr", "lroa=1e-3"), r"--lr names \['lroa'\], which the study does not run"),
    (("--methods", "lora", "--train-sizes", "16,16"), "lists a size twice"),
    (("--methods", "lora", "--run-timeout", "0"), "--run-timeout must be a positive number"),
])
def test_options_that_would_run_nothing_or_be_ignored_are_refused(tmp_path: Path, options: tuple[str, ...],
                                                                   message: str) -> None:
    out = tmp_path / "study"
    with pytest.raises(StudyError, match=message):
        run_cli("compare", *MINI, *options, "--out", str(out))
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StudyError, match="is a file; pass a folder"):
        run_cli("compare", *MINI, "--methods", "lora", "--out", str(tmp_path / "file"))
