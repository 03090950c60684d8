"""Multi-label training on real photos (2x2 hymenoptera mosaics labelled with the classes they hold): sigmoid
outputs, the best epoch by val mAP, per-class thresholds chosen on val and saved, every label over its threshold
predicted, and the same run from a pandas DataFrame."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import graft
from graft.core.errors import ConfigError
from graft.core.metrics import multilabel_f1
from graft.insight.evaluation import evaluate

pytestmark = pytest.mark.slow


def val_rows(table: Path) -> list[dict[str, str]]:
    with open(table, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "val"]


def test_the_run_is_multilabel_and_chooses_its_epoch_and_thresholds_on_val(mosaic_run) -> None:
    m, run_dir = mosaic_run.metrics, mosaic_run.run_dir
    assert m["task"] == "multilabel" and "best_val_acc" not in m
    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"train_map", "val_map"} <= set(rows[0]) and "val_acc" not in rows[0]
    val_maps = [float(r["val_map"]) for r in rows]
    assert int(m["best_epoch"]) == 1 + val_maps.index(max(val_maps))  # the first epoch of the best val mAP
    # results.csv rounds to 6 digits; metrics.json's mAP is recomputed from the best model's val probabilities
    assert math.isclose(m["best_val_map"], max(val_maps), abs_tol=1e-6)
    assert m["best_val_map"] > 0.8 and m["val_micro_f1"] > 0.7  # ants vs bees tiles: easy for ImageNet features
    meta = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
    assert meta["task"] == "multilabel" and meta["classes"] == ["ants", "bees"]
    assert meta["thresholds"] == list(m["thresholds"].values()) and all(0 < t < 1 for t in meta["thresholds"])
    report = json.loads((run_dir / "data_report.json").read_text(encoding="utf-8"))
    assert report["task"] == "multilabel" and report["counts"]["val"] == {"ants": 8, "bees": 8}
    assert sorted(map(tuple, report["split_labels"]["val"])) == sorted([("ants",), ("bees",), ("ants", "bees")] * 4)
    assert "| val mAP |" in (run_dir / "README.md").read_text(encoding="utf-8")  # the model card


def test_predict_gives_both_labels_to_mosaics_that_hold_both(mosaic_run, mosaics) -> None:
    clf = graft.load(mosaic_run.run_dir, device="cpu")
    rows = val_rows(mosaics)
    predicted = [{p.label for p in preds} for preds in clf.predict([mosaics.parent / r["path"] for r in rows])]
    truth = [set(r["labels"].split()) for r in rows]
    both = [p == {"ants", "bees"} for p, t in zip(predicted, truth, strict=True) if len(t) == 2]
    assert sum(both) / len(both) >= 0.7, predicted
    exact = sum(p == t for p, t in zip(predicted, truth, strict=True))
    assert exact / len(rows) >= 0.6, (predicted, truth)
    # the predictions are the labels over the saved thresholds, with the sigmoid probabilities, best first
    preds = clf.predict(mosaics.parent / rows[0]["path"])
    assert [p.probability for p in preds] == sorted((p.probability for p in preds), reverse=True)
    assert all(p.probability >= clf.thresholds[clf.classes.index(p.label)] for p in preds)
    clf.set_threshold(0.999999)
    assert all(not preds for preds in clf.predict([mosaics.parent / r["path"] for r in rows]))


def test_the_saved_thresholds_maximize_each_class_f1_on_val(mosaic_run) -> None:
    """Recomputed from evaluate()'s val probabilities: no threshold gives a class a better val F1."""
    ev = evaluate(mosaic_run.run_dir, plots=False, device="cpu")
    for c in range(len(ev.classes)):
        best = ev.f1["f1"][c]
        for t in np.unique(ev.probs[:, c]):
            trial = list(ev.thresholds)
            trial[c] = float(t)
            assert multilabel_f1(ev.probs, ev.targets, trial)["f1"][c] <= best + 1e-12


def test_a_dataframe_trains_the_run_its_csv_trains(mosaics, mosaic_run, tmp_path, monkeypatch) -> None:
    """graft.train(DataFrame) reads the rows as the CSV's (the same parser). Exact equality is right: the same
    images in the same order and seed give the same batches of the same stored features on the CPU; paths are
    relative to the current folder, the default root of a DataFrame."""
    monkeypatch.chdir(mosaics.parent)
    frame = pd.read_csv(mosaics)
    run = graft.train(frame, label_delim=" ", epochs=8, device="cpu", out=tmp_path, name="frame", seed=0)

    def results(run_dir: Path) -> list[dict[str, str]]:
        with open(run_dir / "results.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    assert results(run.run_dir) == results(mosaic_run.run_dir)
    assert run.metrics["thresholds"] == mosaic_run.metrics["thresholds"]
    config = json.loads((run.run_dir / "config.json").read_text(encoding="utf-8"))
    assert config["data"] == "DataFrame (36 rows)"
    report = json.loads((run.run_dir / "data_report.json").read_text(encoding="utf-8"))
    assert report["table"] == "DataFrame" and report["split"]["val"][0].startswith("val/")


def test_pos_weight_auto_and_what_a_multilabel_run_refuses(mosaics, tmp_path) -> None:
    run = graft.train(mosaics, label_delim=" ", pos_weight="auto", epochs=2, device="cpu", out=tmp_path, name="pw")
    assert run.metrics["task"] == "multilabel" and 0 <= run.best_val_map <= 1
    with pytest.raises(ConfigError, match="multi-label int8 is not supported yet"):
        graft.train(mosaics, label_delim=" ", int8=True, device="cpu", out=tmp_path, name="int8")
    with pytest.raises(ConfigError, match="--label-smoothing: for single-label runs"):
        graft.train(mosaics, label_delim=" ", label_smoothing=0.1, device="cpu", out=tmp_path, name="ls")


def test_tta_averages_the_probabilities_of_the_image_and_its_mirror(mosaic_run, mosaics) -> None:
    clf = graft.load(mosaic_run.run_dir, device="cpu", tta=True)
    batch = torch.stack([clf.tensor(mosaics.parent / r["path"]) for r in val_rows(mosaics)[:4]])
    plain, mirrored = clf.logits(batch).sigmoid(), clf.logits(batch.flip(-1)).sigmoid()
    # same process, same batches: the views' probabilities are those predict_logits averages
    assert torch.allclose(clf.predict_logits(batch).sigmoid(), (plain + mirrored) / 2, atol=1e-6)


def test_finetuning_trains_on_images_with_the_same_targets(mosaics, tmp_path) -> None:
    """Image epochs (decoded images in memory, all layers) take the label-set indices as the feature epochs do;
    the thresholds are chosen through the whole model at the end (the report's evaluation reads them back)."""
    run = graft.train(
        mosaics, label_delim=" ", mode="finetune", head_epochs=1, epochs=1, device="cpu", out=tmp_path, name="ft"
    )
    with open(run.run_dir / "results.csv", newline="") as f:
        assert [r["stage"] for r in csv.DictReader(f)] == ["head", "all"]
    assert run.metrics["task"] == "multilabel" and 0 < run.best_val_map <= 1
    ev = json.loads((run.run_dir / "evaluation.json").read_text(encoding="utf-8"))  # the end-of-run report's
    assert math.isclose(ev["map"], run.best_val_map, abs_tol=1e-4)
    meta = json.loads((run.run_dir / "model.json").read_text(encoding="utf-8"))
    assert meta["thresholds"] == list(run.metrics["thresholds"].values())
