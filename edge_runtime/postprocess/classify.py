"""Classification: activation, then the top-k classes with their labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.results import ClassScore


def activate(x: np.ndarray, activation: str) -> np.ndarray:
    """'softmax' (numerically stable), 'sigmoid', or 'none' (values are already probabilities)."""
    if activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))
    return x


def top_k(scores: np.ndarray, k: int, labels: Sequence[str] | None = None) -> tuple[ClassScore, ...]:
    """The ``k`` best classes of one sample's scores, best first (ties keep index order)."""
    flat = np.asarray(scores, dtype=np.float32).reshape(-1)
    k = min(k, flat.size)
    if k == 1:  # argmax: the first best index, as the tie rule below (a sort costs ~15x more)
        idx = np.array([int(flat.argmax())])
    elif k < flat.size:
        idx = np.argpartition(-flat, k - 1)[:k]
        idx = idx[np.lexsort((idx, -flat[idx]))]
    else:
        idx = np.argsort(-flat, kind="stable")
    return tuple(
        ClassScore(int(i), float(flat[i]), labels[i] if labels is not None and i < len(labels) else None) for i in idx
    )


def classify(output: np.ndarray, activation: str, k: int, labels: Sequence[str] | None) -> tuple[ClassScore, ...]:
    """A classification output (any shape with one sample) -> top-k ClassScores."""
    return top_k(activate(np.asarray(output, dtype=np.float32).reshape(-1), activation), k, labels)
