"""Every metric graft reports, one implementation each: the confusion matrix, accuracy, balanced accuracy,
per-class precision/recall/F1 and macro-F1 (single-label), average precision, mAP and F1 at thresholds
(multi-label), the Wilson interval of an accuracy, and the stratified folds of cross-validation. Plain numpy:
importing this module does not import torch.

Undefined values, as scikit-learn with ``zero_division=0``:

- precision of a class never predicted, recall of a class with no true image, and F1 where both are 0: 0;
- macro-F1 averages over every class of the matrix (sklearn's ``f1_score(..., labels=range(C), average="macro")``;
  without ``labels`` sklearn averages over the classes present in the truth or the predictions only);
- balanced accuracy averages recall over the classes present in the truth (sklearn's), 0 when none is;
- accuracy of no image: 0 (sklearn: NaN);
- average precision of a class with no positive: NaN, and mAP averages over the classes that have one (0 when
  none has; sklearn's ``average_precision_score`` warns and gives -0 for such a class and averages over all).

F1 is ``2PR / (P + R)`` of the rounded precision and recall (sklearn rounds ``2TP / (2TP + FP + FN)`` once: the
two agree to the last bit or two, ~1e-16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

#: z of a two-sided 95% interval
Z95 = 1.959963984540054


# ----------------------------------------------------------------------------------------------------------------
# single-label


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> Any:
    """``(n_classes, n_classes)`` int64 counts: rows true classes, columns predicted ones.

    Torch tensors are counted where they lie (one bincount on their device, the result a tensor there): the
    training loop sums a val pass's matrix batch by batch without waiting for the GPU."""
    n = n_classes
    if type(y_true).__module__.startswith("torch"):
        codes = y_true.long() * n + y_pred.long()
        return codes.bincount(minlength=n * n).view(n, n)
    codes = np.asarray(y_true, dtype=np.int64) * n + np.asarray(y_pred, dtype=np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= n * n):
        raise ValueError(f"class indices must lie in 0..{n - 1} for a {n}-class confusion matrix")
    return np.bincount(codes.ravel(), minlength=n * n).reshape(n, n)


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Share of predictions equal to the truth; 0 for no image."""
    hits = np.asarray(y_true) == np.asarray(y_pred)
    return float(hits.sum() / hits.size) if hits.size else 0.0


class PerClass(NamedTuple):
    """Per class (arrays of length C): precision, recall, F1 (0 where undefined), true images, predicted images."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    predicted: np.ndarray


def precision_recall_f1(cm: Any) -> PerClass:
    """Per-class precision, recall and F1 of a confusion matrix (rows true, columns predicted)."""
    cm = np.asarray(cm)
    return counts_precision_recall_f1(np.diag(cm), cm.sum(axis=0), cm.sum(axis=1))


def counts_precision_recall_f1(tp: Any, predicted: Any, support: Any) -> PerClass:
    """Precision, recall and F1 from per-class counts: true positives, predicted positives, true positives
    plus false negatives (what a multi-label decision per class gives, as a confusion matrix does)."""
    tp, predicted, support = (np.asarray(a, dtype=np.int64) for a in (tp, predicted, support))
    precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(len(tp)), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(len(tp)), where=both > 0)
    return PerClass(precision, recall, f1, support, predicted)


def balanced_accuracy(cm: Any) -> float:
    """Mean recall over the classes that have a true image (sklearn's definition); 0 when none has."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def macro_f1(cm: Any) -> float:
    """Mean F1 over every class of the matrix (0 for a class without true or predicted images); 0 for none."""
    f1 = precision_recall_f1(cm).f1
    return float(np.mean(f1)) if len(f1) else 0.0


def wilson_interval(correct: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (95% by default); ``(0, 1)`` when ``n`` is 0.

    Unlike the normal approximation it stays inside [0, 1] and behaves at 0% and 100% accuracy."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if correct <= 0 else max(0.0, centre - half)  # exact bounds at 0% and 100%, not 1 - 1e-16
    hi = 1.0 if correct >= n else min(1.0, centre + half)
    return lo, hi


def stratified_folds(labels: Any, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of every row: each class's rows shuffled (``numpy.random.default_rng(seed)``, classes
    in increasing order) and dealt out in turn, every class continuing the deal where the previous one stopped.

    So each class's count differs by at most 1 between folds, and so does each fold's size: small classes do not
    all start at fold 0 (with 2 images in each of 10 classes, 5 folds get 4 images each, not 10, 10, 0, 0, 0)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rng.shuffle(rows)
        fold[rows] = (np.arange(len(rows)) + offset) % k
        offset += len(rows)
    return fold


# ----------------------------------------------------------------------------------------------------------------
# multi-label: one score per image and class, targets 0/1


def ranked_counts(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false positives, score) at each distinct score of one class, from the highest down:
    predicting every image whose score is at least that score positive."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], targets[order] > 0.5
    tp, fp = np.cumsum(t), np.cumsum(~t)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of equal scores
    return tp[last], fp[last], s[last]


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class (sklearn's definition: sum over thresholds of precision times the recall
    gained; tied scores are one threshold); NaN when the class has no positive image (undefined)."""
    positives = float((np.asarray(targets) > 0.5).sum())
    if positives == 0:
        return float("nan")
    tp, fp, _ = ranked_counts(np.asarray(scores, dtype=np.float64), np.asarray(targets))
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
    tp, fp, _ = ranked_counts(np.asarray(scores, dtype=np.float64), np.asarray(targets))
    return tp / (tp + fp), tp / positives


def multilabel_f1(probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float]) -> dict[str, Any]:
    """Predictions at ``thresholds`` (a class when its probability reaches its threshold): micro F1 (over every
    image-class decision), macro F1 (the mean of the classes' F1), the exact-match ratio, and per class
    precision, recall, F1, support and predicted count (0 where undefined, as single-label)."""
    predicted = np.asarray(probs) >= np.asarray(thresholds)[None, :]
    truth = np.asarray(targets) > 0.5
    per = counts_precision_recall_f1((predicted & truth).sum(axis=0), predicted.sum(axis=0), truth.sum(axis=0))
    total = int(per.predicted.sum() + per.support.sum())
    return {
        "micro_f1": float(2 * (predicted & truth).sum() / total) if total else 0.0,
        "macro_f1": float(per.f1.mean()) if len(per.f1) else 0.0,
        "exact_match": float((predicted == truth).all(axis=1).mean()) if len(truth) else 0.0,
        "precision": per.precision.tolist(),
        "recall": per.recall.tolist(),
        "f1": per.f1.tolist(),
        "support": per.support.astype(int).tolist(),
        "predicted": per.predicted.astype(int).tolist(),
    }
