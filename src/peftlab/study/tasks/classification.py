"""Classification tasks (text or image): cross-entropy training, accuracy and macro-F1 on held-out data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peftlab.study.data.examples import Labeled, LabeledData
from peftlab.study.data.split import Splits, split
from peftlab.study.tasks.base import Batch, TaskSpec, chunks, resolve_sizes
from peftlab.study.tasks.encoders import Encoder
from peftlab.train import move_batch


class ClassificationTask:
    """A labelled data set + an encoder (text or image). Headline metric: test accuracy."""

    metric = "accuracy"
    higher_is_better = True
    curve_metric = "accuracy"

    def __init__(self, name: str, data: LabeledData, encoder: Encoder, spec: TaskSpec, *, test: int,
                 validation: int, eval_batch_size: int = 64) -> None:
        self.name = name
        self.data = data
        self.encoder = encoder
        self.spec = spec
        self.model_ref = encoder.model_ref
        self.test_size, self.validation_size = resolve_sizes(spec, test, validation)
        self.eval_batch_size = eval_batch_size

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "kind": "classification", "model": self.model_ref,
                "classes": self.data.label_names, "examples": len(self.data.examples),
                "test_size": self.test_size, "validation_size": self.validation_size,
                "input_size": self.encoder.input_size}

    def length(self, example: Labeled) -> int | None:
        return self.encoder.length(example)

    def fields_for(self, method_id: str) -> dict[str, Any]:
        return self.encoder.fields_for(method_id)

    def build_model(self) -> nn.Module:
        return self.encoder.build_model(len(self.data.label_names))

    def splits(self) -> Splits[Labeled]:
        return split(self.data.examples, test=self.test_size, validation=self.validation_size, seed=self.spec.data_seed)

    def collate(self, examples: Sequence[Labeled]) -> Batch:
        return self.encoder.collate(examples)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.encoder.logits(model, batch), batch["labels"])

    def loss_weight(self, batch: Batch) -> int:
        """What `loss` is a mean over: the batch's examples."""
        return len(batch["labels"])

    def infer(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.encoder.logits(model, batch)

    def train_mode(self, model: nn.Module) -> None:
        self.encoder.train_mode(model)

    def evaluate(self, model: nn.Module, examples: Sequence[Labeled], device: torch.device, *,
                 final: bool) -> dict[str, float]:
        """Accuracy, macro-F1 and mean loss over `examples` (call in eval mode without gradients)."""
        predictions, labels, loss_sum = [], [], 0.0
        for chunk in chunks(self.encoder.eval_order(examples), self.eval_batch_size):
            batch = move_batch(self.collate(chunk), device)
            logits = self.encoder.logits(model, batch).float()
            loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            predictions.append(logits.argmax(-1).cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
        pred, gold = np.concatenate(predictions), np.concatenate(labels)
        return {"accuracy": float((pred == gold).mean()), "macro_f1": macro_f1(pred, gold, len(self.data.label_names)),
                "loss": loss_sum / len(gold)}


def macro_f1(pred: np.ndarray, gold: np.ndarray, classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or predictions."""
    scores = []
    for c in range(classes):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0
