"""Small data files for `peftlab train` (classification, prompt/completion, chat) and a way to run the command."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from safetensors.torch import load_file

from peftlab.train.options import TrainOptions

WORDS = {"pos": ["good", "great", "lovely", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad", "grim"]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def labelled_file(tmp_path: Path) -> Path:
    """120 five-word texts labelled pos/neg by their words."""
    rng = random.Random(0)
    rows = []
    for _ in range(120):
        label = rng.choice(["pos", "neg"])
        rows.append({"text": " ".join(rng.choice(WORDS[label]) for _ in range(5)), "label": label})
    return write_jsonl(tmp_path / "labelled.jsonl", rows)


@pytest.fixture
def sums_file(tmp_path: Path) -> Path:
    """60 one-digit additions as prompt/completion pairs."""
    rng = random.Random(1)
    pairs = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(60)]
    return write_jsonl(tmp_path / "sums.jsonl", [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a, b in pairs])


def options_for(*flags: str) -> TrainOptions:
    """The TrainOptions of `peftlab train FLAGS`, parsed as the command parses them."""
    from peftlab.cli import build_parser
    from peftlab.train.cli import options_from_args

    return options_from_args(build_parser().parse_args(["train", *flags]))


def subprocess_env() -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def adapter_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two saved adapters (same tensors required)."""
    first, second = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)
