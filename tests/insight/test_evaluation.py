"""Evaluation: metrics against hand-computed values, and ``evaluate`` on the real frozen run (on its val split it
must reproduce ``best_val_acc`` exactly: the head on the very feature rows training stored), its files, and the CLI.
Everything runs on the CPU, as ``frozen_run`` was trained."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from numerics import assert_accuracy_within_one_image, assert_labels_match
from PIL import Image

from graft.commands.cli import main
from graft.core.errors import DataError, RunError
from graft.core.metrics import balanced_accuracy, confusion_matrix, wilson_interval
from graft.insight.evaluation import evaluate, per_class_metrics


def decode_png(path: Path) -> Image.Image:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.convert("RGB")


# ----------------------------------------------------------------------------------------------------------------
# metrics


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    lo, hi = wilson_interval(81, 100)  # by hand: centre 0.829207 / 1.038415, half-width 0.079254 / 1.038415
    assert (lo, hi) == (pytest.approx(0.72221, abs=1e-5), pytest.approx(0.87485, abs=1e-5))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(147, 153)
    assert lo < 147 / 153 < hi and hi - lo < 0.08


def test_confusion_matrix_and_per_class_metrics() -> None:
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 2, 2, 2, 0]
    cm = confusion_matrix(y_true, y_pred, 4)  # class 3 has no image and is never predicted
    assert cm.tolist() == [[2, 1, 1, 0], [0, 2, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    assert cm.sum() == len(y_true)
    m = per_class_metrics(cm, ["a", "b", "c", "d"])
    assert [x.support for x in m] == [4, 2, 4, 0]
    assert [x.predicted for x in m] == [3, 3, 4, 0]
    assert m[0].precision == pytest.approx(2 / 3) and m[0].recall == pytest.approx(0.5)
    assert m[0].f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m[1].precision == pytest.approx(2 / 3) and m[1].recall == 1.0
    assert m[2].precision == 0.75 and m[2].recall == 0.75 and m[2].f1 == 0.75
    assert (m[3].precision, m[3].recall, m[3].f1) == (0.0, 0.0, 0.0)
    # mean recall over the classes that have images: (0.5 + 1 + 0.75) / 3
    assert balanced_accuracy(cm) == pytest.approx(0.75)


# ----------------------------------------------------------------------------------------------------------------
# evaluate on the real run


@pytest.fixture(scope="module")
def evaluation(frozen_run, tmp_path_factory):
    return evaluate(frozen_run.run_dir, out=tmp_path_factory.mktemp("evaluation"), explain=True, device="cpu")


@pytest.mark.slow
@pytest.mark.numerics
def test_evaluate_reproduces_best_val_acc(evaluation, frozen_run) -> None:
    metrics = frozen_run.metrics
    assert evaluation.source == "val split"
    assert evaluation.n == metrics["n_val"] == 153
    # Exactly: the head on the val feature rows that training stored in the test run's cache, in the same batches
    # of 32 in this process, is training's val phase itself (no backbone pass that could round differently).
    assert evaluation.features == "stored by training"
    assert evaluation.accuracy == metrics["best_val_acc"]
    assert evaluation.unreadable == []
    lo, hi = evaluation.accuracy_ci95
    assert lo < evaluation.accuracy < hi
    assert 0.8 < evaluation.balanced_accuracy <= 1.0


@pytest.mark.slow
def test_evaluation_files(evaluation, frozen_run) -> None:
    out = evaluation.out_dir
    data = json.loads((out / "evaluation.json").read_text())
    n_val = frozen_run.metrics["n_val"]
    assert data["features"] == "stored by training"  # so exactly equal, as above
    assert data["accuracy"] == frozen_run.metrics["best_val_acc"] == data["run_best_val_acc"]
    assert data["n"] == n_val and data["correct"] == round(data["accuracy"] * n_val)
    cm = np.array(data["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == n_val  # counts sum to the number of val images
    assert np.trace(cm) == data["correct"]
    assert cm.sum(axis=1).tolist() == [70, 83]  # hymenoptera val: 70 ants, 83 bees (rows: true class)
    assert data["classes"] == ["ants", "bees"]
    assert [r["class"] for r in data["per_class"]] == ["ants", "bees"]
    assert data["explained"] == {"top_losses": True, "predictions": True}

    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["ants", "bees"]
    assert sum(int(r["support"]) for r in rows) == n_val
    for r, m in zip(rows, data["per_class"], strict=True):
        assert float(r["recall"]) == pytest.approx(m["recall"], abs=1e-6)

    for name, min_size in (("confusion_matrix.png", (500, 250)), ("top_losses.png", (600, 300))):
        im = decode_png(out / name)
        assert min_size[0] <= im.width <= 4000 and min_size[1] <= im.height <= 4000, (name, im.size)
    grid = decode_png(out / "predictions.png")
    assert 800 <= grid.width <= 4000 and 800 <= grid.height <= 4000


@pytest.mark.slow
def test_top_losses_are_misclassified(evaluation, frozen_run) -> None:
    import graft

    data = json.loads((evaluation.out_dir / "evaluation.json").read_text())
    wrong = data["top_losses"]
    assert len(wrong) == data["n"] - data["correct"] > 0
    assert all(w["true"] != w["predicted"] and not w["correct"] for w in wrong)
    assert all(Path(w["path"]).parent.name == w["true"] for w in wrong)
    losses = [w["loss"] for w in wrong]
    assert losses == sorted(losses, reverse=True)
    assert all(w["probability"] >= 0.5 > w["true_probability"] for w in wrong)  # two classes
    # the model, loaded independently, gets these images wrong too (through the backbone, in one batch of these
    # images rather than from the stored rows: a near-tie may fall the other way)
    preds = graft.load(frozen_run.run_dir, device="cpu").predict([w["path"] for w in wrong], top_k=1)
    probs = [[w["probability"], w["true_probability"]] for w in wrong]
    assert_labels_match([p[0].label for p in preds], [w["predicted"] for w in wrong], probs)
    # the prediction grid shows some of the wrong ones, marked as such
    shown = data["predictions_figure"]
    assert len(shown) == 16 and any(not s["correct"] for s in shown)
    assert all(s["correct"] == (s["true"] == s["predicted"]) for s in shown)


@pytest.mark.slow
def test_predictions_grid_marks_wrong_images_in_red(evaluation) -> None:
    data = json.loads((evaluation.out_dir / "evaluation.json").read_text())
    n_wrong = sum(not s["correct"] for s in data["predictions_figure"])
    a = np.asarray(decode_png(evaluation.out_dir / "predictions.png")).astype(int)
    red = (abs(a[..., 0] - 214) < 12) & (abs(a[..., 1] - 39) < 12) & (abs(a[..., 2] - 40) < 12)
    green = (abs(a[..., 0] - 44) < 12) & (abs(a[..., 1] - 160) < 12) & (abs(a[..., 2] - 44) < 12)
    assert red.sum() > 300 * n_wrong  # frames and titles of the wrong ones
    assert green.sum() > 100  # titles of the right ones


@pytest.mark.slow
@pytest.mark.numerics
def test_cli_evaluate_prints_best_val_acc(frozen_run, hymenoptera, tmp_path, capsys) -> None:
    best = frozen_run.metrics["best_val_acc"]
    cpu = ["--device", "cpu", "--no-plots"]
    assert main(["evaluate", str(frozen_run.run_dir), "--out", str(tmp_path / "a"), *cpu]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {best:.4f} (" in out and "equal to this evaluation" in out  # the stored rows: exactly
    assert (tmp_path / "a" / "evaluation.json").is_file() and not (tmp_path / "a" / "top_losses.png").exists()

    # DATA as a train/val dataset: its val folder, walked in the same order, through the backbone again (not the
    # stored rows) -> the same accuracy, to one near-tie image
    args = ["evaluate", str(frozen_run.run_dir), str(hymenoptera), "--out", str(tmp_path / "b"), "--json", *cpu]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == str(hymenoptera) and data["n"] == 153 and data["features"] == "computed"
    assert_accuracy_within_one_image(data["accuracy"], best, 153)


@pytest.mark.slow
def test_evaluate_folder_with_unreadable_and_unknown(frozen_run, hymenoptera, tmp_path) -> None:
    data = tmp_path / "test"
    (data / "bees").mkdir(parents=True)
    for src in sorted((hymenoptera / "val/bees").glob("*.jpg"))[:3]:
        shutil.copy(src, data / "bees" / src.name)
    (data / "bees" / "broken.jpg").write_bytes(b"not an image at all")
    result = evaluate(frozen_run.run_dir, data, plots=False, device="cpu")
    assert result.n == 3 and len(result.unreadable) == 1
    assert result.unreadable[0][0].endswith("broken.jpg") and "not an image" in result.unreadable[0][1]
    assert result.out_dir == frozen_run.run_dir / "eval-test"
    assert result.per_class[1].support == 3 and result.per_class[0].support == 0
    shutil.rmtree(result.out_dir)

    (data / "wasps").mkdir()
    with pytest.raises(DataError, match="wasps"):
        evaluate(frozen_run.run_dir, data, plots=False, device="cpu")


@pytest.mark.slow
def test_evaluate_run_whose_data_moved(frozen_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(frozen_run.run_dir, run)
    report = json.loads((run / "data_report.json").read_text())
    report["root"] = str(tmp_path / "gone")
    (run / "data_report.json").write_text(json.dumps(report))
    with pytest.raises(RunError, match="pass the data folder"):
        evaluate(run, plots=False, device="cpu")
    assert main(["evaluate", str(run), "--device", "cpu"]) == 1
