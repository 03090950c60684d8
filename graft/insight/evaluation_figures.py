"""The figures of an evaluation: ``confusion_matrix.png``, ``top_losses.png`` and ``predictions.png``, with
Grad-CAM overlays where asked. ``result`` is a :class:`graft.insight.evaluation.EvaluationResult` (not imported:
that module imports this one)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def write_figures(
    result: Any, clf: Any, *, explain_top: bool = False, explain_grid: bool = False, n_top: int = 9
) -> None:
    """``confusion_matrix.png``, ``top_losses.png`` and ``predictions.png`` in ``result.out_dir``."""
    from graft.insight import plots

    out = result.out_dir
    top = result.top_losses(n_top)
    needed = sorted(set(top) | set(result.grid))
    crops = dict(zip(needed, plots.load_crops([result.paths[i] for i in needed], clf.preprocess), strict=True))
    explain = sorted(set(top if explain_top else []) | set(result.grid if explain_grid else []))
    # Grad-CAM (torch, which releases the GIL) runs on another thread while this one draws the figures that do
    # not wait for it: on a 2-core CPU its first forward (oneDNN building its kernels) is ~1 s of a cold run.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_explained_maps, clf, result, crops, explain) if explain else None
        result.files["confusion_matrix.png"] = plots.plot_confusion(
            result.confusion, result.classes, out / "confusion_matrix.png"
        )
        if not explain_grid:
            result.files["predictions.png"] = _predictions_figure(result, crops, {}, explain_grid=False)
        cams = pending.result() if pending is not None else {}
    note = result.notes[-1] if explain and not cams and result.notes else None
    result.explained = {"top_losses": explain_top and bool(cams), "predictions": explain_grid and bool(cams)}
    result.files["top_losses.png"] = plots.plot_top_losses(
        _items(result, top, crops, cams if explain_top else {}),
        out / "top_losses.png",
        n_wrong=result.n - result.correct,
        note=note,
    )
    if explain_grid:
        result.files["predictions.png"] = _predictions_figure(result, crops, cams, explain_grid=True, note=note)


def _explained_maps(clf: Any, result: Any, crops: dict[int, torch.Tensor], explain: list[int]) -> dict[int, np.ndarray]:
    """Grad-CAM maps of the images ``explain`` (indices into ``result``), for their predicted classes; none, with
    a note in ``result``, when the run cannot have them."""
    from graft.insight.gradcam import GradCAMUnavailable, gradcam

    try:
        maps = gradcam(clf, [crops[i] for i in explain], targets=[int(result.predicted[i]) for i in explain])
    except GradCAMUnavailable as e:
        result.notes.append(f"Grad-CAM not shown: {e}")
        return {}
    return dict(zip(explain, maps, strict=True))


def _items(result: Any, indices: list[int], crops: dict[int, torch.Tensor], cams: dict[int, np.ndarray]) -> list[Any]:
    from graft.insight import plots

    out_items = []
    for i in indices:
        d = result.item(i)
        out_items.append(
            plots.ImageItem(
                image=crops[i],
                true=d["true"],
                predicted=d["predicted"],
                probability=d["probability"],
                loss=d["loss"],
                cam=cams.get(i),
            )
        )
    return out_items


def _predictions_figure(
    result: Any,
    crops: dict[int, torch.Tensor],
    cams: dict[int, np.ndarray],
    *,
    explain_grid: bool,
    note: str | None = None,
) -> Path:
    from graft.insight import plots

    return plots.plot_predictions(
        _items(result, result.grid, crops, cams if explain_grid else {}),
        result.out_dir / "predictions.png",
        n_total=result.n,
        n_wrong_total=result.n - result.correct,
        note=note,
    )
