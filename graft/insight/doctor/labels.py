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
Imports only numpy, torch and graft.core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from graft.core.device import one_thread
from graft.core.metrics import stratified_folds

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


def row_space(x: torch.Tensor) -> torch.Tensor:
    """``x`` in coordinates of its own row space when it has under half as many rows as columns (else ``x``).

    Exact for an L2-penalised linear head: a weight component orthogonal to every row costs penalty without
    changing a logit, so the optimum (and every L-BFGS iterate from zero) lies in the row space, and an
    orthonormal change of basis keeps both the logits and the penalty. Hymenoptera: 397 columns, not 1280."""
    n, d = x.shape
    if 2 * n > d:
        return x
    _, r = torch.linalg.qr(x.T)  # x.T = Q R: x = R.T Q.T, and R.T holds the coordinates
    return r.T.contiguous()


def _objective(
    z: torch.Tensor, onehot: torch.Tensor, weights: torch.Tensor, shape: tuple[int, int, int], weight_decay: float
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """Sum over the folds of the mean cross-entropy of each head on its rows, plus the L2 penalty, and its gradient
    (closed form: (p - onehot) x per head) as a function of the flat parameters [weights, biases]."""
    folds, classes, d = shape
    nw = folds * classes * d

    def f(flat: np.ndarray) -> tuple[float, np.ndarray]:
        theta = torch.from_numpy(flat.astype(np.float32))
        w, b = theta[:nw].view(folds * classes, d), theta[nw:]
        logp = torch.log_softmax(torch.addmm(b, z, w.T).view(len(z), folds, classes), 2)
        loss = -(logp * onehot[:, None, :]).sum(2).mul_(weights).sum() + weight_decay * w.pow(2).sum()
        r = (logp.exp_().sub_(onehot[:, None, :])).mul_(weights[:, :, None]).view(len(z), folds * classes)
        grad = torch.cat([(r.T @ z).add_(w, alpha=2 * weight_decay).view(-1), r.sum(0)])
        return float(loss), grad.numpy().astype(np.float64)

    return f


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """A dot product in numpy's own loop: BLAS would start its thread pool for vectors this long."""
    return float(np.einsum("i,i->", a, b))


def lbfgs(
    f: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    *,
    max_iter: int = 300,
    history: int = 10,
    tolerance: float = 1e-6,
) -> np.ndarray:
    """Minimise a smooth convex ``f`` (returning value and gradient) from ``x``: L-BFGS with a backtracking
    (Armijo) line search. Not ``torch.optim.LBFGS``: its first use imports ``torch._dynamo`` (~2 s if nothing
    has, more than the fit), it needs autograd where the gradient has a closed form, and its many small vector
    operations run as parallel regions that cost a scheduler tick each on a busy machine (numpy's run on one
    core)."""
    loss, g = f(x)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(max_iter):
        if np.abs(g).max() <= tolerance:
            break
        q, alphas = g.copy(), []
        for s, y, rho in reversed(pairs):
            a = rho * _dot(s, q)
            alphas.append(a)
            q -= a * y
        if pairs:
            s, y, _ = pairs[-1]
            q *= _dot(s, y) / _dot(y, y)
        else:
            q *= min(1.0, 1.0 / np.abs(g).sum())
        for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
            q += (a - rho * _dot(y, q)) * s
        slope, step = -_dot(g, q), 1.0
        while True:
            new = x - step * q
            new_loss, new_g = f(new)
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-8:
                break
            step /= 2
        s, y = new - x, new_g - g
        if _dot(s, y) > 1e-12:  # convex: holds but for rounding
            pairs = [*pairs[-history + 1 :], (s, y, 1.0 / _dot(s, y))]
        done = abs(loss - new_loss) <= 1e-9 * max(1.0, abs(loss))
        x, loss, g = new, new_loss, new_g
        if done:
            break
    return x


def fit_folds(
    x: torch.Tensor, labels: np.ndarray, classes: int, fold: np.ndarray, folds: int, *, weight_decay: float = 2e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """One multinomial logistic regression per fold, each on the images outside its fold (L2 penalty), fitted
    together: weights ``(folds, classes, d)`` and biases ``(folds, classes)``.

    The heads are independent problems; stacked, every pass over ``x`` (what a step costs: reading it) serves
    all of them, and the sum of their objectives has the tuple of their optima as its optimum."""
    d = x.shape[1]
    outside = torch.as_tensor(fold[:, None] != np.arange(folds)[None, :])  # (n, folds): each head's rows
    weights = outside.float() / outside.sum(0).clamp_min(1)  # each head: the mean loss over its rows
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), classes).float()
    f = _objective(x, onehot, weights, (folds, classes, d), weight_decay)
    theta = torch.from_numpy(lbfgs(f, np.zeros(folds * classes * (d + 1))).astype(np.float32))
    return theta[: folds * classes * d].view(folds, classes, d), theta[folds * classes * d :].view(folds, classes)


def out_of_fold(x: torch.Tensor, labels: np.ndarray, classes: int, *, folds: int = 5, seed: int = 0) -> np.ndarray:
    """``(n, classes)`` probabilities, each row from the head fitted without that image's fold."""
    fold = stratified_folds(labels, folds, seed)
    # on one thread, as a head on stored features is trained: a step is two thin products that read the features
    # (bandwidth-bound) and a few small operations, where waking a thread pool costs more than it saves, far more
    # on a busy machine (16k images x 1280 features, 2 cores with other jobs: 5.3 s on one thread, 12.5 s on two)
    with one_thread():
        z = row_space(torch.as_tensor(x, dtype=torch.float32))
        w, b = fit_folds(z, labels, classes, fold, folds)
    index = torch.as_tensor(fold)
    logits = torch.einsum("nd,ncd->nc", z, w[index]) + b[index]
    return torch.softmax(logits, 1).numpy()


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
