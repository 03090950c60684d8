"""graft.core.metrics against scikit-learn on many random cases (classes missing from the truth or from the
predictions, single-class sets, tied scores), the stratified folds' properties, the Wilson interval against its
defining equation, and the module importing without torch."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from graft.core import metrics

sk = pytest.importorskip("sklearn.metrics")

CASES = 200
TOL = 1e-9


def label_cases(seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(truth, predictions, classes): 1 to 8 classes, 1 to 60 images; the truth and the predictions each drawn
    from a random subset of the classes, so some classes have no image, some are never predicted."""
    rng = np.random.default_rng(seed)
    for i in range(CASES):
        c = int(rng.integers(1, 9))
        n = int(rng.integers(1, 61))
        in_truth = rng.choice(c, size=int(rng.integers(1, c + 1)), replace=False)
        in_pred = rng.choice(c, size=int(rng.integers(1, c + 1)), replace=False)
        truth = rng.choice(in_truth, size=n)
        pred = truth.copy() if i % 10 == 0 else rng.choice(in_pred, size=n)  # some perfect cases
        if i % 7 == 0:  # mostly right: the typical case
            right = rng.random(n) < 0.8
            pred = np.where(right, truth, pred)
        yield truth, pred, c


def test_the_cases_cover_the_edge_cases() -> None:
    seen = {"missing from truth": 0, "never predicted": 0, "one class": 0, "one class in truth": 0}
    for truth, pred, c in label_cases():
        seen["missing from truth"] += len(set(range(c)) - set(truth)) > 0
        seen["never predicted"] += len(set(range(c)) - set(pred)) > 0
        seen["one class"] += c == 1
        seen["one class in truth"] += len(set(truth)) == 1
    assert all(v >= 10 for v in seen.values()), seen


def test_confusion_matrix_and_accuracy_match_sklearn() -> None:
    for truth, pred, c in label_cases():
        cm = metrics.confusion_matrix(truth, pred, c)
        assert cm.dtype == np.int64 and cm.shape == (c, c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns on a single label even with labels= given
            assert np.array_equal(cm, sk.confusion_matrix(truth, pred, labels=range(c)))
        assert metrics.accuracy(truth, pred) == pytest.approx(sk.accuracy_score(truth, pred), abs=TOL)
    assert metrics.accuracy([], []) == 0.0
    assert metrics.confusion_matrix([], [], 3).tolist() == [[0] * 3] * 3
    with pytest.raises(ValueError, match=r"0\.\.2"):
        metrics.confusion_matrix([0, 3], [0, 1], 3)


def test_balanced_accuracy_matches_sklearn_over_the_classes_in_the_truth() -> None:
    for truth, pred, c in label_cases():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns when a predicted class is absent from the truth
            expected = sk.balanced_accuracy_score(truth, pred)
        assert metrics.balanced_accuracy(metrics.confusion_matrix(truth, pred, c)) == pytest.approx(expected, abs=TOL)
    assert metrics.balanced_accuracy(np.zeros((3, 3), np.int64)) == 0.0  # no image: 0


def test_per_class_precision_recall_f1_match_sklearn_with_zero_division_0() -> None:
    for truth, pred, c in label_cases():
        per = metrics.precision_recall_f1(metrics.confusion_matrix(truth, pred, c))
        p, r, f, s = sk.precision_recall_fscore_support(truth, pred, labels=range(c), zero_division=0)
        np.testing.assert_allclose(per.precision, p, rtol=0, atol=TOL)
        np.testing.assert_allclose(per.recall, r, rtol=0, atol=TOL)
        np.testing.assert_allclose(per.f1, f, rtol=0, atol=TOL)
        assert per.support.tolist() == s.tolist()
        assert per.predicted.tolist() == np.bincount(pred, minlength=c).tolist()


def test_macro_f1_averages_over_every_class() -> None:
    for truth, pred, c in label_cases():
        ours = metrics.macro_f1(metrics.confusion_matrix(truth, pred, c))
        expected = sk.f1_score(truth, pred, labels=range(c), average="macro", zero_division=0)
        assert ours == pytest.approx(expected, abs=TOL)
        if set(truth) | set(pred) == set(range(c)):  # sklearn's default labels: those seen; the same then
            assert ours == pytest.approx(sk.f1_score(truth, pred, average="macro", zero_division=0), abs=TOL)
    # a class neither in the truth nor predicted counts as F1 0 (sklearn without labels= leaves it out)
    assert metrics.macro_f1(metrics.confusion_matrix([0, 1], [0, 1], 3)) == pytest.approx(2 / 3)
    assert metrics.macro_f1(np.zeros((0, 0), np.int64)) == 0.0


def score_cases(seed: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(scores, 0/1 targets), (N, C): scores on a coarse grid (many ties), some classes with no positive."""
    rng = np.random.default_rng(seed)
    for i in range(CASES):
        n, c = int(rng.integers(1, 50)), int(rng.integers(1, 6))
        levels = int(rng.integers(2, 12))
        scores = rng.integers(0, levels, size=(n, c)) / levels
        targets = (rng.random((n, c)) < rng.uniform(0.05, 0.9, size=c)).astype(np.float32)
        if i % 5 == 0:
            scores = np.where(targets > 0, scores + 0.5, scores)  # separable classes: AP 1
        yield scores, targets


def test_average_precision_and_map_match_sklearn_with_ties() -> None:
    undefined = 0
    for scores, targets in score_cases():
        aps = metrics.per_class_ap(scores, targets)
        defined = [c for c in range(targets.shape[1]) if targets[:, c].any()]
        for c in range(targets.shape[1]):
            if c in defined:
                expected = sk.average_precision_score(targets[:, c], scores[:, c])
                assert aps[c] == pytest.approx(expected, abs=TOL)
                assert metrics.average_precision(scores[:, c], targets[:, c]) == aps[c]
            else:  # no positive: undefined (sklearn warns and gives 0)
                assert math.isnan(aps[c])
                undefined += 1
        expected = (
            np.mean([sk.average_precision_score(targets[:, c], scores[:, c]) for c in defined]) if defined else 0.0
        )
        assert metrics.mean_average_precision(scores, targets) == pytest.approx(expected, abs=TOL)
        if len(defined) == targets.shape[1] and len(targets) > 1:
            macro = sk.average_precision_score(targets, scores, average="macro")
            assert metrics.mean_average_precision(scores, targets) == pytest.approx(macro, abs=TOL)
    assert undefined >= 10


def test_pr_curve_matches_sklearn() -> None:
    for scores, targets in score_cases():
        if not targets[:, 0].any():
            continue
        precision, recall = metrics.pr_curve(scores[:, 0], targets[:, 0])
        p, r, _ = sk.precision_recall_curve(targets[:, 0], scores[:, 0])
        # sklearn: lowest threshold first, with the (1, 0) end point appended
        np.testing.assert_allclose(precision, p[:-1][::-1], rtol=0, atol=TOL)
        np.testing.assert_allclose(recall, r[:-1][::-1], rtol=0, atol=TOL)


def test_multilabel_f1_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    for scores, targets in score_cases():
        thresholds = rng.uniform(0.1, 0.9, size=targets.shape[1])
        report = metrics.multilabel_f1(scores, targets, thresholds)
        predicted = (scores >= thresholds[None, :]).astype(int)
        truth = targets.astype(int)
        for c in range(truth.shape[1]):  # each class a binary problem
            p, r, f, s = sk.precision_recall_fscore_support(truth[:, c], predicted[:, c], labels=[1], zero_division=0)
            assert (report["precision"][c], report["recall"][c], report["f1"][c]) == pytest.approx(
                (p[0], r[0], f[0]), abs=TOL
            )
            assert report["support"][c] == s[0] and report["predicted"][c] == predicted[:, c].sum()
        if truth.shape[1] > 1:  # sklearn reads one column as a binary vector, not multi-label
            for average in ("micro", "macro"):
                expected = sk.f1_score(truth, predicted, average=average, zero_division=0)
                assert report[f"{average}_f1"] == pytest.approx(expected, abs=TOL)
        assert report["exact_match"] == pytest.approx(sk.accuracy_score(truth, predicted), abs=TOL)


def test_stratified_folds_spread_every_class_and_every_fold_evenly() -> None:
    rng = np.random.default_rng(3)
    for _ in range(CASES):
        k = int(rng.integers(2, 7))
        c = int(rng.integers(1, 8))
        labels = rng.integers(0, c, size=int(rng.integers(k, 200)))
        fold = metrics.stratified_folds(labels, k, seed=7)
        assert fold.shape == labels.shape and set(fold.tolist()) <= set(range(k))  # a partition of the rows
        for cls in np.unique(labels):
            counts = np.bincount(fold[labels == cls], minlength=k)
            assert counts.max() - counts.min() <= 1
        sizes = np.bincount(fold, minlength=k)
        assert sizes.max() - sizes.min() <= 1  # classes continue the deal: no fold left empty
        assert np.array_equal(metrics.stratified_folds(labels, k, seed=7), fold)  # seeded
        assert np.array_equal(metrics.stratified_folds(list(labels), k, seed=7), fold)


def test_stratified_folds_depend_on_the_seed_and_keep_the_class_shares() -> None:
    labels = np.array([0] * 50 + [1] * 10)
    fold = metrics.stratified_folds(labels, 5, seed=0)
    for k in range(5):
        assert ((fold == k) & (labels == 0)).sum() == 10 and ((fold == k) & (labels == 1)).sum() == 2
    assert not np.array_equal(metrics.stratified_folds(labels, 5, seed=1), fold)
    tiny = np.repeat(np.arange(10), 2)  # 2 images per class, 5 folds: 4 images each
    assert np.bincount(metrics.stratified_folds(tiny, 5, seed=0)).tolist() == [4] * 5


def test_wilson_interval_solves_its_equation() -> None:
    z = metrics.Z95
    for n in (1, 2, 5, 17, 100, 1000):
        for correct in range(0, n + 1, max(1, n // 9)):
            lo, hi = metrics.wilson_interval(correct, n)
            p = correct / n
            assert 0.0 <= lo <= p <= hi <= 1.0
            for bound in (lo, hi):  # the Wilson bounds are the p with |p_hat - p| = z sqrt(p (1 - p) / n)
                assert (p - bound) ** 2 == pytest.approx(z * z * bound * (1 - bound) / n, abs=1e-12)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)
    assert metrics.wilson_interval(0, 10)[0] == 0.0 and metrics.wilson_interval(10, 10)[1] == 1.0


def test_confusion_matrix_of_tensors_stays_a_tensor() -> None:
    import torch

    for truth, pred, c in list(label_cases())[:20]:
        cm = metrics.confusion_matrix(torch.from_numpy(truth), torch.from_numpy(pred), c)
        assert isinstance(cm, torch.Tensor) and cm.dtype == torch.long
        assert np.array_equal(cm.numpy(), metrics.confusion_matrix(truth, pred, c))
        assert metrics.balanced_accuracy(cm) == metrics.balanced_accuracy(cm.numpy())


@pytest.mark.subprocess
def test_importing_the_metrics_does_not_import_torch() -> None:
    code = "import sys, graft.core.metrics; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
