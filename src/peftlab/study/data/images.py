"""Image classification data: scikit-learn digits (8x8), or Fashion-MNIST when the Debian package is installed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from peftlab.study.data.examples import Labeled, LabeledData

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def digits() -> LabeledData:
    """1,797 handwritten digits, 8x8 grey levels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0  # (N, 8, 8)
    return LabeledData([Labeled(img, int(y)) for img, y in zip(images, data.target)], [str(i) for i in range(10)])


def fashion_mnist(limit: int = 12000) -> LabeledData:
    """Fashion-MNIST (train + test files pooled; the study makes its own split), first `limit` images, in [0, 1]."""
    images, labels = [], []
    for part in ("train", "t10k"):
        with gzip.open(FASHION_DIR / f"{part}-images-idx3-ubyte.gz") as f:
            raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
        with gzip.open(FASHION_DIR / f"{part}-labels-idx1-ubyte.gz") as f:
            labels.append(np.frombuffer(f.read(), dtype=np.uint8, offset=8))
        images.append(raw.reshape(-1, 28, 28))  # (N, 28, 28)
    x = np.concatenate(images)[:limit].astype(np.float32) / 255.0
    y = np.concatenate(labels)[:limit]
    return LabeledData([Labeled(img, int(t)) for img, t in zip(x, y)], FASHION_LABELS)


def default_images() -> LabeledData:
    """Fashion-MNIST when /usr/share/datasets/fashion-mnist exists, else scikit-learn digits."""
    return fashion_mnist() if (FASHION_DIR / "train-images-idx3-ubyte.gz").exists() else digits()
