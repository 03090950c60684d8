"""report.html: written by every ``graft train``, self-contained, and rendered by headless Chromium without
console errors and with every image decoded."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from browser import chromium, console_errors, full_page_screenshot
from PIL import Image

from graft.insight.report import render_report, write_run_report


@pytest.mark.slow
@pytest.mark.numerics
def test_train_writes_the_report_and_its_figures(frozen_run) -> None:
    run = frozen_run.run_dir
    for name in ("report.html", "curves.png", "confusion_matrix.png", "predictions.png", "top_losses.png"):
        assert (run / name).is_file(), name
    for name in ("evaluation.json", "per_class.csv"):
        assert (run / name).is_file(), name
    ev = json.loads((run / "evaluation.json").read_text())
    # frozen: the report does not run the backbone again, it applies the head to the stored val rows, in training's
    # batches and process, so its accuracy is best_val_acc exactly
    assert ev["features"] == "stored by training"
    assert ev["accuracy"] == frozen_run.metrics["best_val_acc"]
    assert ev["explained"] == {"top_losses": True, "predictions": False}


@pytest.mark.slow
def test_report_is_self_contained(frozen_run) -> None:
    page = (frozen_run.run_dir / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page  # nothing to run
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)  # nothing fetched
    assert "@import" not in page and "url(" not in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 4  # curves, confusion matrix, predictions, top losses
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
    best = frozen_run.metrics["best_val_acc"]
    for text in (
        f"{best:.4f}",
        "Skipped files: 1",
        "imageNotFound.gif",
        "placeholder image",
        "Classes are balanced enough",
        "95% CI",
        "Balanced accuracy".lower(),
        "mobilenet_v2",
        "torch version",
        "model.safetensors",
    ):
        assert text in page, text


@pytest.mark.slow
@pytest.mark.browser
def test_report_in_headless_chromium(frozen_run, tmp_path) -> None:
    report = frozen_run.run_dir / "report.html"
    shots = Path(os.environ.get("GRAFT_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with chromium(width=1400, height=1000) as driver:
        driver.get(report.as_uri())
        assert driver.title.startswith("graft run")
        assert driver.execute_script("return document.readyState") == "complete"
        widths = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1)")
        assert len(widths) == 4 and all(w > 0 for w in widths), widths
        shot = full_page_screenshot(driver, shots / "report.png")
        assert console_errors(driver) == []
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height > 3000  # the whole page, figures included


@pytest.mark.slow
def test_imbalance_warning_and_missing_pieces(frozen_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(frozen_run.run_dir, run)
    report = json.loads((run / "data_report.json").read_text())
    report["counts"]["train"] = {"ants": 500, "bees": 40}
    (run / "data_report.json").write_text(json.dumps(report))
    (run / "top_losses.png").unlink()
    page = render_report(run)
    assert "Warning: classes are imbalanced: ants has 500 training images, 12.5x the 40 of bees" in page
    assert "top_losses.png is not available" in page


def test_a_failing_report_only_warns(tmp_path) -> None:
    messages: list[str] = []
    assert write_run_report(tmp_path, log=messages.append) is None
    assert len(messages) == 1 and messages[0].startswith("warning: report.html not written")
    assert "the trained model is saved" in messages[0]


@pytest.mark.slow
def test_report_without_matplotlib(frozen_run, tmp_path, monkeypatch) -> None:
    """No matplotlib: the page is still written (figures marked missing) and the run says why."""
    import sys

    from graft.insight.report import write_report

    run = tmp_path / "run"
    shutil.copytree(frozen_run.run_dir, run)
    for png in run.glob("*.png"):
        png.unlink()
    report = json.loads((run / "data_report.json").read_text())
    report["split"]["val"] = report["split"]["val"][:4]  # a short val split keeps this test fast
    (run / "data_report.json").write_text(json.dumps(report))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    messages: list[str] = []
    page = write_report(run, log=messages.append).read_text()
    assert "curves.png is not available" in page and "<img" not in page
    assert "pip install 'graft[plots]'" in messages[0]
    assert json.loads((run / "evaluation.json").read_text())["n"] == 4
