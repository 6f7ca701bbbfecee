"""Dialogue data: consecutive English utterance pairs of the chatterbot corpus (question -> answer)."""

from __future__ import annotations

import itertools

import yaml

from peftlab.study.data.assets import package_dir
from peftlab.study.data.examples import PromptCompletion


def chatterbot_pairs(language: str = "english") -> list[PromptCompletion]:
    """Every (utterance, reply) pair of every conversation in chatterbot_corpus/data/<language>/*.yml."""
    root = package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / language
    pairs: list[PromptCompletion] = []
    for file in sorted(root.glob("*.yml")):
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            turns = [str(t).strip() for t in conversation if t is not None and str(t).strip()]
            pairs.extend(PromptCompletion(q, a) for q, a in itertools.pairwise(turns))
    return pairs
