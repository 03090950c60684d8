"""Ensemble runs (``graft train --auto --ensemble K``): one run that graft.load loads, whose probabilities are the
mean of its members', that predicts, evaluates (equal to the run's val accuracy) and exports as one ONNX module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from numerics import PROB_ATOL, softmax

import graft
from graft.insight import evaluate

pytestmark = pytest.mark.slow

OPTIONS = {"auto": True, "time_budget": 1.0, "epochs": 2, "device": "cpu", "seed": 0}


def small_val(root, hymenoptera):
    """The real train split (linked: its stored features are reused) and five val images per class."""
    import shutil

    root.mkdir()
    (root / "train").symlink_to(hymenoptera / "train")
    for cls in ("ants", "bees"):
        (root / "val" / cls).mkdir(parents=True)
        for p in sorted((hymenoptera / "val" / cls).glob("*.jpg"))[:5]:
            shutil.copyfile(p, root / "val" / cls / p.name)
    return root


def test_ensemble_run_loads_predicts_and_evaluates(hymenoptera, tmp_path) -> None:
    data = small_val(tmp_path / "a", hymenoptera)
    run = graft.train(data, out=tmp_path / "runs", ensemble=2, **OPTIONS)
    meta = json.loads((run.run_dir / "model.json").read_text())
    assert meta["kind"] == "ensemble" and len(meta["members"]) == 2
    clf = graft.load(run.run_dir, device="cpu")
    members = [graft.load(run.run_dir / m, device="cpu") for m in meta["members"]]
    images = sorted((data / "val" / "bees").glob("*.jpg"))[:3]
    batch = torch.stack([clf.tensor(p) for p in images])
    by_hand = np.mean([softmax(m.logits(batch).numpy()) for m in members], axis=0)
    np.testing.assert_allclose(softmax(clf.logits(batch).numpy()), by_hand, atol=PROB_ATOL)
    predicted = clf.predict(images, top_k=1)
    assert [p[0].label for p in predicted] == [clf.classes[i] for i in by_hand.argmax(1)]
    result = evaluate(run.run_dir, plots=False, device="cpu")
    assert result.accuracy == run.metrics["best_val_acc"]  # the members' stored val rows, as the run measured

    from graft.deploy.export import export

    exported = export(run.run_dir, verify_images=4)  # one ONNX module: one body for the two heads, averaged
    assert exported.verification.passed and exported.path.stat().st_size < 20e6  # one mobilenet_v2 body, not two
