"""Multi-label numbers, shared by training (the epoch's mAP, the thresholds it saves), prediction and evaluation:
average precision per class and its macro mean (mAP), per-class thresholds chosen on val to maximize each class's
F1, and micro/macro F1 at given thresholds. Plain numpy, no torch.

A multi-label model has one sigmoid output per class; an image gets every class whose probability reaches that
class's threshold (none, one, or several).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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


def _ranked(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false positives, score) at each distinct score, from the highest down: predicting every
    image whose score is at least that score positive."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], targets[order] > 0.5
    tp, fp = np.cumsum(t), np.cumsum(~t)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of equal scores
    return tp[last], fp[last], s[last]


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class (sklearn's definition: sum over thresholds of precision times the recall
    gained); NaN when the class has no positive image (undefined)."""
    positives = float((np.asarray(targets) > 0.5).sum())
    if positives == 0:
        return float("nan")
    tp, fp, _ = _ranked(np.asarray(scores, dtype=np.float64), np.asarray(targets))
    recall = tp / positives
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """Average precision of every class (columns); NaN for a class without positives."""
    return [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP: the mean AP over the classes that have a positive image (0 when none has)."""
    aps = [a for a in per_class_ap(scores, targets) if a == a]  # NaN: no positive, no AP
    return float(np.mean(aps)) if aps else 0.0


def pr_curve(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) of one class at every distinct score, from the highest threshold down."""
    positives = max(float((np.asarray(targets) > 0.5).sum()), 1.0)
    tp, fp, _ = _ranked(np.asarray(scores, dtype=np.float64), np.asarray(targets))
    return tp / (tp + fp), tp / positives


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
        tp, fp, s = _ranked(p, t)
        f1 = 2 * tp / (tp + fp + positives)  # 2PR/(P+R) written with counts
        k = int(np.argmax(f1))  # the first (highest) threshold of the best F1
        below = s[k + 1] if k + 1 < len(s) else 0.0
        out.append(float((s[k] + below) / 2))
    return out


def f1_report(probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float]) -> dict[str, Any]:
    """Predictions at ``thresholds``: micro F1 (over every image-class decision), macro F1 (the mean of the
    classes' F1), and per class precision, recall, F1, support and predicted count."""
    predicted = np.asarray(probs) >= np.asarray(thresholds)[None, :]
    truth = np.asarray(targets) > 0.5
    tp = (predicted & truth).sum(axis=0)
    n_pred, support = predicted.sum(axis=0), truth.sum(axis=0)
    precision = np.divide(tp, n_pred, out=np.zeros(len(tp)), where=n_pred > 0)
    recall = np.divide(tp, support, out=np.zeros(len(tp)), where=support > 0)
    f1 = np.divide(2 * tp, n_pred + support, out=np.zeros(len(tp)), where=(n_pred + support) > 0)
    total = int(n_pred.sum() + support.sum())
    return {
        "micro_f1": float(2 * tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()) if len(f1) else 0.0,
        "exact_match": float((predicted == truth).all(axis=1).mean()) if len(truth) else 0.0,
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.astype(int).tolist(),
        "predicted": n_pred.astype(int).tolist(),
    }
