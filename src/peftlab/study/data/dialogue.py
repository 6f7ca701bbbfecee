"""Dialogue data: consecutive English utterance pairs of the chatterbot corpus (question -> answer)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import yaml

from peftlab.study.data.assets import package_dir
from peftlab.study.data.examples import Labeled, LabeledData, PromptCompletion


def _conversations(language: str) -> Iterator[tuple[str, list[str]]]:
    """(topic file name, the conversation's non-empty turns) for every conversation of the corpus."""
    root = package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / language
    for file in sorted(root.glob("*.yml")):
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            yield file.stem, [str(t).strip() for t in conversation if t is not None and str(t).strip()]


def chatterbot_pairs(language: str = "english") -> list[PromptCompletion]:
    """Every (utterance, reply) pair of every conversation in chatterbot_corpus/data/<language>/*.yml."""
    return [PromptCompletion(q, a) for _, turns in _conversations(language) for q, a in itertools.pairwise(turns)]


def chatterbot_topics(language: str = "english", min_examples: int = 60) -> LabeledData:
    """Each utterance labelled with its conversation's topic file (ai, food, history, ...); topics with fewer than
    `min_examples` distinct utterances are left out."""
    by_topic: dict[str, dict[str, None]] = {}
    for topic, turns in _conversations(language):
        by_topic.setdefault(topic, {}).update(dict.fromkeys(turns))
    names = sorted(t for t, texts in by_topic.items() if len(texts) >= min_examples)
    return LabeledData([Labeled(text, i) for i, name in enumerate(names) for text in by_topic[name]], names)
