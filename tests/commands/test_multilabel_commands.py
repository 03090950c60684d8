"""A multi-label run through the commands: graft predict (lines, CSV with a labels column, --threshold),
graft serve (a labels list with probabilities), graft export (verified ONNX, the sidecar's task and thresholds),
graft quantize (refused with one line), graft check on the table."""

from __future__ import annotations

import csv
import json

import httpx
import numpy as np
import pytest

import graft
from graft.commands.cli import main
from graft.core.config import ServeConfig
from graft.deploy.export import export
from tests.commands.test_serve import serving


@pytest.mark.slow
def test_predict_csv_and_threshold(mosaic_run, mosaics, tmp_path, capsys) -> None:
    clf = graft.load(mosaic_run.run_dir, device="cpu")
    val = mosaics.parent / "val"
    files = sorted(val.iterdir())
    expected = {str(p): [x.label for x in preds] for p, preds in zip(files, clf.predict(files), strict=True)}
    out = tmp_path / "preds.csv"
    assert main(["predict", str(mosaic_run.run_dir), str(val), "--out", str(out), "--device", "cpu"]) == 0
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["path", "labels", "probabilities", "error"]
    every = graft.load(mosaic_run.run_dir, device="cpu")
    every.set_threshold(1e-12)  # every class, with its probability
    predicted = zip(files, every.predict(files), strict=True)
    probs = {str(p): {x.label: x.probability for x in preds} for p, preds in predicted}
    for r in table:  # another process: a label may differ only where its probability ties its threshold
        for c in set(r["labels"].split(";") if r["labels"] else []) ^ set(expected[r["path"]]):
            assert abs(probs[r["path"]][c] - clf.thresholds[clf.classes.index(c)]) < 1e-4, r
    assert all(set(json.loads(r["probabilities"])) == set(r["labels"].split(";")) - {""} for r in table)

    assert main(["predict", str(mosaic_run.run_dir), str(val / "val0000.jpg"), "--threshold", "0.999999"]) == 0
    assert "(no label over its threshold)" in capsys.readouterr().out


@pytest.mark.slow
def test_serve_answers_a_labels_list_with_probabilities(mosaic_run, mosaics) -> None:
    clf = graft.load(mosaic_run.run_dir, device="cpu")
    image = mosaics.parent / "val" / "val0002.jpg"  # a both-class mosaic (the kinds cycle ants, bees, both)
    expected = clf.predict(image)
    with serving(clf, ServeConfig(run=mosaic_run.run_dir, device="cpu")) as url:
        info = httpx.get(f"{url}/model").json()
        answer = httpx.post(f"{url}/predict", content=image.read_bytes(), timeout=60).json()
    assert info["task"] == "multilabel" and list(info["thresholds"]) == ["ants", "bees"]
    assert answer["labels"] == [p.label for p in expected]
    assert set(answer["probabilities"]) == {"ants", "bees"}
    for p in answer["predictions"]:
        assert abs(p["probability"] - answer["probabilities"][p["label"]]) < 1e-12  # the same number, twice
    assert np.allclose([p["probability"] for p in answer["predictions"]], [p.probability for p in expected], atol=1e-4)


@pytest.mark.slow
def test_export_is_verified_and_records_task_and_thresholds(mosaic_run, tmp_path) -> None:
    result = export(mosaic_run.run_dir, format="onnx", out=tmp_path / "m.onnx", verify_images=4)
    assert result.verification.passed
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text(encoding="utf-8"))
    assert sidecar["task"] == "multilabel" and sidecar["thresholds"] == mosaic_run.metrics["thresholds"]
    assert sidecar["postprocess"].startswith("sigmoid")


@pytest.mark.slow
def test_quantize_refuses_with_one_line(mosaic_run, capsys) -> None:
    assert main(["quantize", str(mosaic_run.run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: multi-label int8 is not supported yet") and len(err.strip().splitlines()) == 1


def test_check_describes_the_multilabel_table(mosaics, capsys) -> None:
    assert main(["check", str(mosaics), "--label-delim", " ", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "multilabel" and report["counts"]["train"] == {"ants": 16, "bees": 16}
