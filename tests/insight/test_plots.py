"""Figures: each one decodes as a PNG of a sane size, with content checked where it can be (de-normalization,
curves from results.csv, stage lines), and everything works without a display."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graft.commands.cli import main
from graft.core.preprocess import Preprocess, denormalize, normalize
from graft.insight import plots


def decode_png(path: Path) -> Image.Image:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.convert("RGB")


@pytest.mark.numerics
def test_denormalize_inverts_normalize() -> None:
    p = Preprocess()
    x = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    back = denormalize(normalize(p)(x), p)
    assert torch.allclose(back, x.float() / 255, atol=1e-6)


def test_show_batch_cli(hymenoptera, tmp_path, capsys) -> None:
    out = tmp_path / "batch.png"
    assert main(["show-batch", str(hymenoptera), "--out", str(out), "--n", "8"]) == 0
    assert str(out) in capsys.readouterr().out
    im = decode_png(out)
    assert 600 <= im.width <= 3000 and 400 <= im.height <= 3000
    a = np.asarray(im).astype(float)
    assert a.std() > 30  # photos, not a blank or a normalized (dark, clipped) canvas
    # de-normalized: pixel statistics of a photo, not of normalized values clipped into [0, 1]
    assert 60 < a.mean() < 230


@pytest.mark.slow
def test_curves_from_the_run(frozen_run, tmp_path) -> None:
    path = plots.plot_curves(frozen_run.run_dir / "results.csv", tmp_path / "curves.png")
    im = decode_png(path)
    assert 1000 <= im.width <= 2000 and 300 <= im.height <= 600
    assert (frozen_run.run_dir / "curves.png").is_file()  # written by graft train
    assert decode_png(frozen_run.run_dir / "curves.png").size == im.size


def test_curves_with_stages_and_a_failure(tmp_path) -> None:
    rows = [
        {"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 20, "val_loss": 1.2 / e, "val_acc": 0.5 + e / 25,
         "lr": 1e-3 if e < 3 else 2e-4 / e, "seconds": 1.0, "stage": "head" if e < 3 else "all"}
        for e in range(1, 7)
    ]  # fmt: skip
    decode_png(plots.plot_curves(rows, tmp_path / "staged.png"))
    with pytest.raises(plots.PlotError, match="no epochs"):
        plots.plot_curves([], tmp_path / "none.png")

    messages: list[str] = []
    writer = plots.CurvesWriter(tmp_path / "no-run", every=0, log=messages.append)
    assert writer() is None and writer() is None  # no results.csv: one warning, then silent
    assert len(messages) == 1 and "training goes on" in messages[0]


def test_confusion_matrix_many_classes(tmp_path) -> None:
    rng = np.random.default_rng(0)
    classes = [f"class_{i}" for i in range(30)]
    cm = rng.integers(0, 20, size=(30, 30))
    im = decode_png(plots.plot_confusion(cm, classes, tmp_path / "cm.png"))
    assert 1000 <= im.width <= 4000 and 500 <= im.height <= 2000


@pytest.mark.slow
def test_predict_plot_and_explain(frozen_run, hymenoptera, tmp_path, capsys) -> None:
    images = sorted((hymenoptera / "val/bees").glob("*.jpg"))[:2]
    plot_dir = tmp_path / "figs"
    args = ["predict", str(frozen_run.run_dir), *map(str, images), "--top-k", "2", "--device", "cpu", "--json"]
    assert main([*args, "--explain", "--plot-dir", str(plot_dir)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [Path(r["figure"]).name for r in rows] == [f"{p.stem}.png" for p in images]
    for r in rows:
        im = decode_png(Path(r["figure"]))
        assert 900 <= im.width <= 1600 and 250 <= im.height <= 800  # three panels: input, Grad-CAM, bars

    assert main([*args[:-1], "--plot", "--plot-dir", str(tmp_path / "plain")]) == 0
    assert "2 figure(s) written" in capsys.readouterr().out
    plain = decode_png(tmp_path / "plain" / f"{images[0].stem}.png")
    assert plain.width < decode_png(plot_dir / f"{images[0].stem}.png").width  # two panels


@pytest.mark.subprocess
def test_headless_without_display(tmp_path) -> None:
    """No DISPLAY, no MPLBACKEND: figures are still drawn (Agg, no pyplot)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    code = (
        "import sys, numpy as np; from graft.insight import plots; "
        "plots.plot_confusion(np.array([[3, 1], [0, 4]]), ['a', 'b'], sys.argv[1]); "
        "import sys; assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "cm.png")], env=env, check=True, timeout=60)
    decode_png(tmp_path / "cm.png")
