"""Shared helpers of the study tests: the CLI through a minimal argparse shim (as the main CLI wires it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from peftlab.study.cli import add_subcommands


def parse(*argv: str) -> argparse.Namespace:
    """Parse `argv` the way `peftlab` does (subcommands from peftlab.study.cli)."""
    parser = argparse.ArgumentParser(prog="peftlab")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def run_cli(*argv: str) -> int:
    """Run the command `argv` as `peftlab` would."""
    args = parse(*argv)
    return args.func(args)


def read_results(out: Path) -> list[dict[str, Any]]:
    """Every line of OUT/results.jsonl, in order."""
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


# A miniature study: a random 2-layer BERT (built from a config; MiniLM's tokenizer) on real tweets.
MINI = ("--model", "tiny-bert", "--steps", "4", "--eval-every", "2", "--train-sizes", "32", "--test-size", "32",
        "--validation-size", "16", "--batch-size", "8", "--max-length", "32", "--no-progress")


@pytest.fixture
def cli():
    return run_cli
