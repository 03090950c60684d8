"""Evaluation of a multi-label run (mAP, per-class AP, F1 at the saved thresholds, PR curves, the report) and of
any run on a table of images."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

import graft
from graft.core.errors import DataError
from graft.core.metrics import average_precision, multilabel_f1
from graft.inference import multilabel as ml
from graft.insight.evaluation import evaluate
from graft.insight.report import write_report


@pytest.mark.slow
def test_the_val_split_gives_the_runs_own_numbers(mosaic_run) -> None:
    """Frozen: evaluated from the val features training stored, so the very probabilities the thresholds were
    chosen on (equal up to float formatting of the saved thresholds)."""
    ev = evaluate(mosaic_run.run_dir, device="cpu")
    m = mosaic_run.metrics
    assert ev.features == "stored by training" and ev.n == 12
    assert math.isclose(ev.map, m["best_val_map"], abs_tol=1e-9)
    assert math.isclose(ev.f1["micro_f1"], m["val_micro_f1"], abs_tol=1e-9)
    assert [round(a, 6) for a in ev.ap] == list(m["val_ap"].values())
    saved = json.loads((mosaic_run.run_dir / "evaluation.json").read_text(encoding="utf-8"))
    assert saved["task"] == "multilabel" and len(saved["predictions"]) == 12
    assert {p["path"] for p in saved["predictions"]} == {str(p) for p in ev.paths}
    with open(mosaic_run.run_dir / "per_class.csv", newline="") as f:
        assert [r["class"] for r in csv.DictReader(f)] == ["ants", "bees"]
    assert (mosaic_run.run_dir / "pr_curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_the_report_shows_map_and_pr_curves(mosaic_run) -> None:
    page = write_report(mosaic_run.run_dir).read_text(encoding="utf-8")
    assert "best val mAP" in page and "Precision-recall curves" in page and "micro F1" in page


@pytest.mark.slow
def test_evaluate_on_a_table_of_other_images(mosaic_run, mosaics, tmp_path) -> None:
    """A table's val rows (its split column), labels read with the run's --label-delim; the same images as the
    val split give the same mAP (computed through the model here, not from stored features)."""
    ev = evaluate(mosaic_run.run_dir, mosaics, out=tmp_path / "eval", device="cpu", plots=False)
    assert ev.source == str(mosaics) and ev.n == 12 and ev.features == "computed"
    assert math.isclose(ev.map, mosaic_run.metrics["best_val_map"], abs_tol=1e-4)
    bad = mosaics.parent / f"unknown-{tmp_path.name}.csv"
    bad.write_text("path,labels\nval/val0000.jpg,wasps\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"label\(s\) the model does not know: wasps"):
        evaluate(mosaic_run.run_dir, bad, device="cpu", plots=False)


@pytest.mark.slow
def test_a_single_label_run_evaluates_a_table(frozen_run, hymenoptera, tmp_path) -> None:
    """Paths relative to the table's folder; without a split column every row is evaluated; the accuracy is that
    of the predictions on those images."""
    files = [p for c in ("ants", "bees") for p in sorted((hymenoptera / "val" / c).glob("*.jpg"))[:6]]
    for p in files:  # copies under the table's folder (a table reads only files under its root)
        (tmp_path / p.parent.name).mkdir(exist_ok=True)
        shutil.copy(p, tmp_path / p.parent.name / p.name)
    table = tmp_path / "some.csv"
    table.write_text("path,label\n" + "".join(f"{p.parent.name}/{p.name},{p.parent.name}\n" for p in files))
    ev = evaluate(frozen_run.run_dir, table, device="cpu", plots=False)
    assert ev.out_dir == frozen_run.run_dir / "eval-some.csv"
    assert ev.n == 12 and list(ev.labels) == [0] * 6 + [1] * 6
    clf = graft.load(frozen_run.run_dir, device="cpu")
    top1 = [preds[0].label for preds in clf.predict(files)]
    expected = np.mean([t == p.parent.name for t, p in zip(top1, files, strict=True)])
    assert ev.accuracy == pytest.approx(expected, abs=1 / 12 + 1e-9)  # one near-tie may fall the other way


def test_thresholds_are_chosen_to_maximize_f1() -> None:
    """The numbers on a hand-made case: AP as sklearn defines it, thresholds halfway below the best cut."""
    probs = np.array([[0.9, 0.2], [0.8, 0.7], [0.4, 0.6], [0.3, 0.1]])
    targets = np.array([[1, 0], [1, 1], [0, 1], [1, 0]], dtype=np.float32)
    assert average_precision(probs[:, 0], targets[:, 0]) == pytest.approx((1 + 1 + 0.75) / 3)
    assert average_precision(probs[:, 1], targets[:, 1]) == pytest.approx(1.0)
    thresholds = ml.best_thresholds(probs, targets)
    assert thresholds[1] == pytest.approx((0.6 + 0.2) / 2)  # both positives above, every negative below
    report = multilabel_f1(probs, targets, thresholds)
    assert report["f1"][1] == 1.0 and report["support"] == [3, 2]
    assert math.isnan(average_precision(np.array([0.5]), np.array([0.0])))
