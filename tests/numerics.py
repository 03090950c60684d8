"""Comparing numbers that were computed in different ways (batch sizes, thread counts, processes, CPU kernels).

    from numerics import assert_logits_close, assert_same_top1  # tests/ is on sys.path (pytest's rootdir conftest)

Float32 sums come out in another order when the batch composition, the number of threads or processes, or the
CPU's vector kernels (AVX2, AVX-512, AMX) change, and their results differ in the last digits: a probability of
0.951176 on one machine is 0.951175 on another. Such numbers are compared with the tolerances below, labels exactly
except where a near-tie lets rounding flip them, accuracies within one image. Exact equality is for computations
that are identical by construction (the same process, batches and kernels, or the same stored rows); the tests
that use it say why.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Logits: float32 carries ~7 significant digits, and a mobilenet_v2 logit sums ~1e6 products whose order depends on
# the kernel and the batch, so reordering leaves ~1e-6 relative noise (what an AVX-512 machine shows against this
# AVX2 one). 1e-4 relative leaves it 100x room; 1e-5 absolute covers logits near zero. A real bug moves logits by
# far more: a swapped class order or another normalization changes them by more than 0.1.
LOGIT_RTOL = 1e-4
LOGIT_ATOL = 1e-5
# Probabilities (softmax moves them by at most half the change of the logits' differences): the same room over the
# ~1e-6 seen, and over the 6 decimals a predictions CSV keeps.
PROB_ATOL = 1e-4


def assert_logits_close(got: np.ndarray, want: np.ndarray) -> None:
    """Logits of the same images computed another way (batches, threads, processes, kernels, exporter)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=LOGIT_RTOL, atol=LOGIT_ATOL)


def near_tie(probabilities: Sequence[float]) -> bool:
    """The two best classes are within rounding of each other: the top-1 label may fall either way."""
    top = sorted(probabilities, reverse=True)
    return len(top) > 1 and top[0] - top[1] <= 2 * PROB_ATOL


def assert_same_top1(got: np.ndarray, want: np.ndarray) -> None:
    """The argmax of two logit (or probability) matrices agrees on every row, but at most one row whose two best
    classes are a near-tie in ``want``."""
    got, want = np.asarray(got), np.asarray(want)
    flipped = np.flatnonzero(got.argmax(1) != want.argmax(1))
    probs = softmax(want)
    ties = [i for i in flipped if near_tie(probs[i])]
    assert len(ties) == len(flipped) <= 1, f"top-1 differs on rows {flipped.tolist()} (near-ties: {ties})"


def assert_labels_match(got: Sequence[str], want: Sequence[str], want_probs: Sequence[Sequence[float]]) -> None:
    """Top-1 labels computed two ways agree, but at most one whose reference probabilities are a near-tie."""
    assert len(got) == len(want)
    flipped = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    ties = [i for i in flipped if near_tie(want_probs[i])]
    assert len(ties) == len(flipped) <= 1, f"labels differ at {flipped} (near-ties: {ties})"


def assert_accuracy_within_one_image(got: float, want: float, n: int) -> None:
    """Accuracies over the same ``n`` images computed two ways: rounding can flip one near-tie image, no more."""
    assert abs(got - want) <= 1 / n + 1e-9, f"{got} vs {want}: more than one of {n} images apart"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def read_predictions_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a ``graft predict --out`` CSV, header checked."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "label", "probability", "top_k", "error"], reader.fieldnames
        return list(reader)


def assert_prediction_csvs_match(got_path: Path, want_path: Path) -> None:
    """Two prediction CSVs of the same files, computed two ways: the same paths in the same order, the same errors,
    the same top-k classes with probabilities within :data:`PROB_ATOL`, and the same labels but at most one flipped
    by a near-tie."""
    got, want = read_predictions_csv(got_path), read_predictions_csv(want_path)
    assert [r["path"] for r in got] == [r["path"] for r in want]
    assert [r["error"] for r in got] == [r["error"] for r in want]
    rows = [(a, b) for a, b in zip(got, want, strict=True) if not b["error"]]
    assert rows, "no predictions to compare"
    for a, b in rows:
        top_a, top_b = json.loads(a["top_k"]), json.loads(b["top_k"])
        assert set(top_a) == set(top_b), (a["path"], top_a, top_b)
        for label, p in top_b.items():
            assert abs(top_a[label] - p) <= PROB_ATOL, (a["path"], label, top_a[label], p)
        assert abs(float(a["probability"]) - float(b["probability"])) <= PROB_ATOL, (a["path"], a, b)
    want_probs = [list(json.loads(b["top_k"]).values()) for _, b in rows]
    assert_labels_match([a["label"] for a, _ in rows], [b["label"] for _, b in rows], want_probs)
