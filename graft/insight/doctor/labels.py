"""Likely label errors from stored features: out-of-fold probabilities of linear heads, confident learning's
per-class thresholds, and the labels of each image's nearest neighbours.

- Out-of-fold: the images are split into ``folds`` stratified folds; a multinomial logistic regression (a linear
  head, as ``graft train --mode freeze`` trains) is fitted on the other folds by L-BFGS and predicts the held-out
  one, so no image is scored by a head that saw its label. Seconds for thousands of images.
- Confident learning (Northcutt, Jiang and Chuang, 2021): class j's threshold is the mean out-of-fold probability
  of j over the images labelled j; an image labelled i is a candidate error when some other class j reaches its
  threshold, and the suggested label is the most probable such class.
- kNN disagreement: the similarity-weighted share of the image's nearest neighbours labelled otherwise.

The score ranks images: the mean of (1 - out-of-fold probability of the given label) and the kNN disagreement.
Imports only numpy and torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: A candidate whose score reaches this is a confident error (``--exclude-list`` leaves it out): its own label got
#: under ~20% out of fold and most of its neighbours carry another label.
CONFIDENT = 0.75


@dataclass
class LabelScores:
    """Per image: out-of-fold probabilities ``(n, C)``, kNN disagreement, score, suggested label, and whether
    confident learning counts it as a candidate error."""

    probs: np.ndarray
    disagreement: np.ndarray
    score: np.ndarray
    suggested: np.ndarray
    candidate: np.ndarray


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number of each image: every class dealt round-robin over the folds after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % folds
    return fold


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, *, weight_decay: float = 2e-4) -> torch.nn.Linear:
    """A multinomial logistic regression on ``x`` (full batch, L-BFGS, L2 penalty)."""
    head = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=100, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def out_of_fold(x: torch.Tensor, labels: np.ndarray, classes: int, *, folds: int = 5, seed: int = 0) -> np.ndarray:
    """``(n, classes)`` probabilities, each row from the head fitted without that image's fold."""
    fold = stratified_folds(labels, folds, seed)
    probs = np.zeros((len(labels), classes), np.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    torch.manual_seed(seed)
    for f in range(folds):
        held = fold == f
        if not held.any() or held.all():
            continue
        train = torch.as_tensor(~held)
        head = fit_linear(x[train], y[train], classes)
        with torch.no_grad():
            probs[held] = torch.softmax(head(x[torch.as_tensor(held)]), 1).numpy()
    return probs


def knn_disagreement(labels: np.ndarray, sims: np.ndarray, index: np.ndarray, k: int = 10) -> np.ndarray:
    """Similarity-weighted share of each image's ``k`` nearest neighbours whose label differs from its own."""
    sims, index = sims[:, :k], index[:, :k]
    w = np.clip(sims, 0, None) + 1e-6
    other = labels[index] != labels[:, None]
    return (w * other).sum(1) / w.sum(1) if sims.size else np.zeros(len(labels))


def score_labels(
    x: torch.Tensor, labels: np.ndarray, classes: int, sims: np.ndarray, index: np.ndarray, *, seed: int = 0
) -> LabelScores:
    """Out-of-fold probabilities + confident-learning candidates + kNN disagreement for normalised features ``x``
    and their kNN (``sims``, ``index`` of a ``same`` search)."""
    folds = int(min(5, max(2, np.bincount(labels, minlength=classes).min())))
    probs = out_of_fold(x, labels, classes, folds=folds, seed=seed)
    n = len(labels)
    given = probs[np.arange(n), labels]
    # per-class thresholds: the mean self-confidence of each class (a class with no image never reaches it)
    thresholds = np.array(
        [probs[labels == c, c].mean() if (labels == c).any() else np.inf for c in range(classes)], np.float32
    )
    above = probs >= thresholds[None, :]
    above[np.arange(n), labels] = False
    candidate = above.any(1)
    masked = np.where(above, probs, -1.0)
    suggested = np.where(candidate, masked.argmax(1), probs.argmax(1))
    disagreement = knn_disagreement(labels, sims, index)
    score = 0.5 * (1.0 - given) + 0.5 * disagreement
    return LabelScores(probs, disagreement, score, suggested, candidate)
