"""Which unlabelled images are worth labelling next: the ranking behind ``graft suggest`` and the app's Label page.

A pool image helps most when the model is unsure of it (labelling what it already knows teaches it little) and
when it is unlike what is labelled and what else is picked (50 near-copies of one unsure image teach what one
does). :func:`rank` orders a pool from the run's probabilities and the images' features:

- ``margin``: smallest gap between the two most probable classes first;
- ``entropy``: highest entropy of the probabilities first;
- ``diverse``: among the most uncertain (by margin, :data:`POOL_FACTOR` times the batch), k-center greedy in
  feature space: each pick is the candidate farthest (cosine) from everything labelled or picked so far; then
  the rest by margin;
- ``random``: a seeded permutation (the baseline);
- ``auto``: the strategy :data:`AUTO` names, chosen by ``benchmarks/bench_active.py`` (NOTES.md, "Suggest").

:func:`fit_head` fits the linear softmax head that ranks a pool when no run exists yet (the app's Label page; the
head ``benchmarks/bench_active.py`` measures the strategies with).

Imports numpy and the command's config (where the strategy names are declared); :func:`fit_head` the doctor's
L-BFGS when it is called.
"""

from __future__ import annotations

import numpy as np

from graft.core.config.insight import STRATEGY_NAMES

STRATEGIES = STRATEGY_NAMES
#: What ``auto`` means: the fewest labels to 95% of the full train set's frozen accuracy on trashnet_half in
#: benchmarks/bench_active.py (3 seeds: margin 0.70x random's labels, diverse 0.80x, entropy 0.82x; on 6 seeds
#: 0.72x / 0.78x / 0.89x). hymenoptera reaches the target from 4-44 labels whatever the order: it ranks nothing.
AUTO = "margin"
#: ``diverse`` picks each batch among this many times its size of the most uncertain images.
POOL_FACTOR = 5


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (0: a tie, the most uncertain); 1 for a single class."""
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top = np.sort(probs, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(1)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.mean(0) if len(x) > 1 else x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _k_center(candidates: np.ndarray, feats: np.ndarray, labelled: np.ndarray | None, k: int) -> list[int]:
    """``k`` of ``candidates`` (row indices of ``feats``), each the farthest from the labelled rows and the picks
    so far (greedy k-center on cosine distance); the first, when nothing is labelled, the most uncertain."""
    x = feats[candidates]
    nearest = np.full(len(candidates), np.inf)
    if labelled is not None and len(labelled):
        nearest = 1 - (x @ labelled.T).max(1)
    picked: list[int] = []
    for _ in range(min(k, len(candidates))):
        i = int(np.argmax(nearest)) if np.isfinite(nearest).any() else 0
        picked.append(i)
        nearest = np.minimum(nearest, 1 - x @ x[i])
        nearest[picked] = -np.inf
    return [int(candidates[i]) for i in picked]


def rank(
    probs: np.ndarray,
    feats: np.ndarray | None = None,
    *,
    strategy: str = "auto",
    n: int = 50,
    labelled: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of the pool's rows, most worth labelling first (every row once).

    ``probs``: the run's class probabilities of each pool image; ``feats``: their features (``diverse`` only);
    ``labelled``: features of the labelled images (``diverse``: picks keep away from them too); ``n``: the batch
    that ``diverse`` spreads out (the order past it is by margin)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    strategy = AUTO if strategy == "auto" else strategy
    rows = len(probs)
    if strategy == "random":
        return np.random.default_rng(seed).permutation(rows)
    if strategy == "entropy":
        return np.argsort(-entropy(probs), kind="stable")
    by_margin = np.argsort(margins(probs), kind="stable")
    if strategy == "margin" or feats is None or rows == 0:
        return by_margin
    both = _unit(np.concatenate([feats, labelled]) if labelled is not None and len(labelled) else feats)
    pool, known = both[:rows], both[rows:]
    candidates = by_margin[: max(n, POOL_FACTOR * n)]
    first = _k_center(candidates, pool, known, n)
    taken = np.zeros(rows, bool)
    taken[first] = True
    return np.concatenate([np.array(first, np.int64), by_margin[~taken[by_margin]]])


#: The L2 penalty on a fitted head's weights (the doctor's: graft.insight.doctor.labels.fit_folds).
WEIGHT_DECAY = 2e-4


class LinearHead:
    """A linear softmax head on features: weights ``w`` ``(C, F)`` and biases ``b`` ``(C,)``, float64."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        self.w, self.b = w, b

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.w.T + self.b

    def probs(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.logits(x).argmax(1) == y).mean())


def fit_head(x: np.ndarray, y: np.ndarray, classes: int, init: LinearHead | None = None) -> LinearHead:
    """The multinomial logistic regression on features ``x`` with labels ``y`` (the linear layer of ``graft train
    --mode freeze``): mean cross-entropy plus :data:`WEIGHT_DECAY` times the squared weights, minimised in float64
    by the doctor's L-BFGS (``graft.insight.doctor.labels.lbfgs``) to a gradient of 1e-6, from ``init`` (a head of
    the same shape: a previous fit) or zero. Converged in float64, the head does not depend on the order of the
    rows (a float32 fit stops on rounding, and its head then does)."""
    from graft.insight.doctor.labels import lbfgs

    x = np.asarray(x, np.float64)
    onehot = np.eye(classes)[y]
    d = x.shape[1]

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: classes * d].reshape(classes, d), theta[classes * d :]
        z = x @ w.T + b
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        r = (np.exp(logp) - onehot) / len(x)
        loss = -(logp * onehot).sum() / len(x) + WEIGHT_DECAY * (w * w).sum()
        return float(loss), np.concatenate([(r.T @ x + 2 * WEIGHT_DECAY * w).ravel(), r.sum(0)])

    fits = init is not None and init.w.shape == (classes, d)
    theta0 = np.concatenate([init.w.ravel(), init.b]) if fits and init is not None else np.zeros(classes * (d + 1))
    theta = lbfgs(f, theta0, max_iter=500, tolerance=1e-6)
    return LinearHead(theta[: classes * d].reshape(classes, d), theta[classes * d :])
