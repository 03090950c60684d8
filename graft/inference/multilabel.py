"""Multi-label decisions, shared by training (the thresholds it saves), prediction and evaluation: sigmoid
probabilities, multi-hot targets, and per-class thresholds chosen on val to maximize each class's F1. Their metrics
(AP, mAP, F1 at thresholds) are in :mod:`graft.core.metrics`. Plain numpy, no torch.

A multi-label model has one sigmoid output per class; an image gets every class whose probability reaches that
class's threshold (none, one, or several).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graft.core.metrics import ranked_counts

#: the threshold of a class with no positive val image to choose one from
DEFAULT_THRESHOLD = 0.5


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities of logits, computed without overflow for large negative logits."""
    z = np.asarray(logits, dtype=np.float64)
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


def multi_hot(label_sets: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """``(N, C)`` 0/1 float32 targets of lists of class indices."""
    out = np.zeros((len(label_sets), n_classes), dtype=np.float32)
    for i, labels in enumerate(label_sets):
        out[i, list(labels)] = 1
    return out


def best_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class, the threshold that maximizes its F1 on ``probs`` (val): halfway between the lowest probability
    still predicted positive and the next one below (so that a new image near either is judged as val was);
    :data:`DEFAULT_THRESHOLD` for a class without positives."""
    out = []
    for c in range(probs.shape[1]):
        p, t = np.asarray(probs[:, c], dtype=np.float64), targets[:, c]
        positives = float((t > 0.5).sum())
        if positives == 0:
            out.append(DEFAULT_THRESHOLD)
            continue
        tp, fp, s = ranked_counts(p, t)
        f1 = 2 * tp / (tp + fp + positives)  # 2PR/(P+R) written with counts
        k = int(np.argmax(f1))  # the first (highest) threshold of the best F1
        below = s[k + 1] if k + 1 < len(s) else 0.0
        out.append(float((s[k] + below) / 2))
    return out
