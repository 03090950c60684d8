"""graft in Jupyter: the HTML of a run, a loaded classifier and an evaluation, figures that show inline, and
``examples/quickstart.ipynb`` executed by a real kernel (nbclient + ipykernel of this interpreter)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graft.core.progress import in_notebook
from graft.inference.loading import load
from graft.insight.evaluation import evaluate
from graft.insight.plots import plot_confusion

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_run_and_classifier_show_summary_and_figures(frozen_run) -> None:
    metrics = frozen_run.metrics
    evaluation = json.loads((frozen_run.run_dir / "evaluation.json").read_text())
    lo, hi = evaluation["accuracy_ci95"]
    html = frozen_run._repr_html_()
    assert f"{metrics['best_val_acc']:.4f}" in html and f"95% CI {lo:.3f}-{hi:.3f}" in html
    assert "mobilenet_v2" in html and "freeze" in html and "2: ants, bees" in html
    assert f"best {metrics['best_epoch']} of {metrics['epochs_run']}" in html and str(frozen_run.run_dir) in html
    assert html.count('<img src="data:image/png;base64,') == 2  # curves.png and confusion_matrix.png
    clf_html = load(frozen_run.run_dir, device="cpu")._repr_html_()
    assert "graft classifier" in clf_html and "cpu" in clf_html and f"{metrics['best_val_acc']:.4f}" in clf_html


@pytest.mark.slow
def test_evaluation_shows_interval_per_class_and_confusion(frozen_run, tmp_path: Path) -> None:
    result = evaluate(frozen_run.run_dir, out=tmp_path / "ev", plots=False, device="cpu")
    html = result._repr_html_()
    lo, hi = result.accuracy_ci95
    assert f"{result.accuracy:.4f} ({result.correct}/{result.n}; 95% CI {lo:.3f}-{hi:.3f})" in html
    cm = result.confusion
    assert "<th>true \\ predicted</th>" in html  # no figure written: the counts as a table
    assert f"<td>ants</td><td>{cm[0, 0]}</td><td>{cm[0, 1]}</td>" in html
    for m in result.per_class:
        assert f"<td>{m.name}</td><td>{m.precision:.4f}</td><td>{m.recall:.4f}</td>" in html


def test_figures_show_inline_and_still_write_files(tmp_path: Path) -> None:
    cm = np.array([[5, 1], [2, 7]])
    figure = plot_confusion(cm, ["a", "b"])  # no path: the figure, for a notebook to show
    png = figure._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    path = plot_confusion(cm, ["a", "b"], tmp_path / "cm.png")
    assert path == tmp_path / "cm.png" and path.read_bytes().startswith(b"\x89PNG")
    assert not in_notebook()  # pytest is no kernel: progress bars stay on terminals


def _outputs(nb: dict) -> tuple[str, list[str], list[str], str]:
    """(all text/html outputs, image/png outputs, each cell's stdout, all stderr) of an executed notebook."""
    html, pngs, stdout, stderr = [], [], [], []
    for cell in nb["cells"]:
        text = ""
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            html.append(data.get("text/html", ""))
            if "image/png" in data:
                pngs.append(data["image/png"])
            if out.get("output_type") == "stream":
                if out.get("name") == "stdout":
                    text += out["text"]
                else:
                    stderr.append(out["text"])
        stdout.append(text)
    return "".join(html), pngs, stdout, "".join(stderr)


@pytest.mark.slow
@pytest.mark.subprocess
def test_quickstart_notebook_runs(hymenoptera: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))  # the kernel inherits the environment
    monkeypatch.setenv("GRAFT_DATA", str(hymenoptera))
    monkeypatch.setenv("GRAFT_EXAMPLE_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("GRAFT_EXAMPLE_DEVICE", "cpu")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel "python3" is the ipykernel of the interpreter running the tests (jupyter_client's native kernel)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": tmp_path}})
    client.execute()  # raises CellExecutionError on the first cell that fails

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    run_dir = tmp_path / "runs" / "quickstart"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    html, pngs, stdout, stderr = _outputs(nb)
    assert "graft run" in html and f"{metrics['best_val_acc']:.4f}" in html and "95% CI" in html
    assert "graft evaluation: val split" in html and "graft classifier" in html
    assert html.count("data:image/png;base64,") >= 4  # curves + confusion matrix of the run and the classifier
    assert len(pngs) == 1  # plot_confusion's figure, shown inline
    assert f"best val acc {metrics['best_val_acc']:.4f}" in "".join(stdout)  # the training log
    predicted = stdout[-1].strip().splitlines()  # the last cell: 4 images, top 2 of 2 classes each
    assert len(predicted) == 4 and all("ants" in line and "bees" in line for line in predicted)
    assert "features" in stderr and "%|" in stderr  # the feature pass's progress bar (a text bar: no ipywidgets here)
