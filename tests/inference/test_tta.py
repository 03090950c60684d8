"""Test-time augmentation: the image and its mirror, probabilities averaged, in the one Classifier path that predict,
evaluate and serve share; ``graft evaluate RUN --tta`` records it and predict/serve then default to it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from numerics import PROB_ATOL, softmax

import graft
from graft.commands.cli import main
from graft.core.config import ServeConfig
from graft.insight import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture
def run_copy(frozen_run, tmp_path: Path) -> Path:
    """A copy of the session's frozen run (evaluate --tta writes into model.json; the shared run stays as it is)."""
    return Path(shutil.copytree(frozen_run.run_dir, tmp_path / "run"))


@pytest.fixture(scope="module")
def images(hymenoptera: Path) -> list[Path]:
    return sorted((hymenoptera / "val/ants").glob("*.jpg"))[:3] + sorted((hymenoptera / "val/bees").glob("*.jpg"))[:3]


def by_hand(clf, paths: list[Path]) -> np.ndarray:
    """The mean of the softmax of the plain and of the mirrored crops, each computed on its own."""
    batch = torch.stack([clf.tensor(p) for p in paths])
    plain = softmax(clf.logits(batch).numpy())
    mirrored = softmax(clf.logits(torch.flip(batch, dims=[3])).numpy())
    assert np.abs(plain - mirrored).max() > 1e-3  # the mirror is another input: the average is not a no-op
    return (plain + mirrored) / 2


def test_tta_averages_the_probabilities_of_the_image_and_its_mirror(frozen_run, images) -> None:
    clf = graft.load(frozen_run.run_dir, device="cpu")
    assert clf.tta is False  # a run nobody evaluated with --tta predicts without it
    want = by_hand(clf, images)
    batch = torch.stack([clf.tensor(p) for p in images])
    np.testing.assert_allclose(softmax(clf.predict_logits(batch).numpy()), softmax(clf.logits(batch).numpy()))
    clf.tta = True
    np.testing.assert_allclose(softmax(clf.predict_logits(batch).numpy()), want, atol=PROB_ATOL)
    top = clf.predict(images, top_k=2)
    for preds, row in zip(top, want, strict=True):
        assert preds[0].probability == pytest.approx(row.max(), abs=PROB_ATOL)
        assert preds[0].label == clf.classes[int(row.argmax())]


def test_evaluate_tta_records_it_and_predict_and_serve_follow(run_copy, images, capsys) -> None:
    plain = evaluate(run_copy, plots=False, device="cpu")
    assert plain.features == "stored by training" and not plain.tta
    assert "tta" not in json.loads((run_copy / "model.json").read_text())  # not asked: nothing recorded

    tta = evaluate(run_copy, plots=False, device="cpu", tta=True)
    assert tta.tta and tta.features == "computed"  # stored rows are of the plain crop only
    assert json.loads((run_copy / "model.json").read_text())["tta"] is True
    assert json.loads((run_copy / "evaluation.json").read_text())["tta"] is True
    assert abs(tta.accuracy - plain.accuracy) <= 0.05  # the same model on the same images, one more view

    clf = graft.load(run_copy, device="cpu")
    assert clf.tta is True  # the recorded default
    want = by_hand(clf, images)

    def predicted(*extra: str) -> np.ndarray:
        assert main(["predict", str(run_copy), *map(str, images), "--json", "--device", "cpu", *extra]) == 0
        rows = json.loads(capsys.readouterr().out)
        return np.array([{p["label"]: p["probability"] for p in r["predictions"]}[clf.classes[0]] for r in rows])

    np.testing.assert_allclose(predicted(), want[:, 0], atol=PROB_ATOL)
    no_tta = graft.load(run_copy, device="cpu", tta=False)
    assert no_tta.tta is False
    plain_probs = softmax(no_tta.logits(torch.stack([no_tta.tensor(p) for p in images])).numpy())
    np.testing.assert_allclose(predicted("--no-tta"), plain_probs[:, 0], atol=PROB_ATOL)

    from fastapi.testclient import TestClient

    from graft.commands.serve import create_app

    app = create_app(clf, ServeConfig(run=run_copy, device="cpu"))
    with TestClient(app, base_url="http://127.0.0.1") as client:  # lifespan: the batcher; a loopback Host
        assert client.get("/model").json()["tta"] is True
        answer = client.post("/predict?top_k=2", content=images[0].read_bytes()).json()
    served = {p["label"]: p["probability"] for p in answer["predictions"]}
    assert served[clf.classes[0]] == pytest.approx(want[0, 0], abs=PROB_ATOL)

    evaluate(run_copy, plots=False, device="cpu", tta=False)  # --no-tta measured: recorded too
    assert graft.load(run_copy, device="cpu").tta is False
