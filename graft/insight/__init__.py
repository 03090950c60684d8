"""What a run shows: its evaluation (:mod:`~graft.insight.evaluation`), figures (:mod:`~graft.insight.plots`),
Grad-CAM (:mod:`~graft.insight.gradcam`), report.html (:mod:`~graft.insight.report`), the training callbacks
that draw them, the model card, experiment trackers, and ``graft doctor`` (:mod:`~graft.insight.doctor`).

The public names are exported here and imported on first use, so that importing one module of this package (the
CLI does) does not import matplotlib. Grad-CAM of a loaded classifier is :func:`graft.insight.gradcam.gradcam`
(the module's own name: a package attribute cannot be both)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CELL",
    "CSS",
    "FIGURES",
    "IMBALANCE_RATIO",
    "MAX_SKIPPED_LISTED",
    "REPORT_FILE",
    "RIGHT",
    "WRONG",
    "ClassMetrics",
    "CurvesWriter",
    "EvaluationResult",
    "GradCAMUnavailable",
    "ImageItem",
    "PlotError",
    "augmented_batch",
    "evaluate",
    "folder_items",
    "grad_cam",
    "grid_indices",
    "load_crops",
    "overlay",
    "per_class_metrics",
    "plot_batch",
    "plot_confusion",
    "plot_curves",
    "plot_prediction",
    "plot_predictions",
    "plot_top_losses",
    "prediction_figures",
    "read_results",
    "render_report",
    "show_batch",
    "target_layer",
    "write_figures",
    "write_report",
    "write_run_report",
    "write_tables",
]

#: public name -> the module that defines it, imported on first use
_LAZY = {
    "ClassMetrics": "graft.insight.evaluation",
    "EvaluationResult": "graft.insight.evaluation",
    "evaluate": "graft.insight.evaluation",
    "folder_items": "graft.insight.evaluation",
    "grid_indices": "graft.insight.evaluation",
    "per_class_metrics": "graft.insight.evaluation",
    "write_figures": "graft.insight.evaluation_figures",
    "write_tables": "graft.insight.evaluation",
    "CELL": "graft.insight.plots",
    "RIGHT": "graft.insight.plots",
    "WRONG": "graft.insight.plots",
    "CurvesWriter": "graft.insight.plots",
    "ImageItem": "graft.insight.plots",
    "PlotError": "graft.insight.plots",
    "load_crops": "graft.insight.plots",
    "overlay": "graft.insight.plots",
    "plot_batch": "graft.insight.plots",
    "plot_confusion": "graft.insight.plots",
    "plot_curves": "graft.insight.plots",
    "plot_prediction": "graft.insight.plots",
    "plot_predictions": "graft.insight.plots",
    "plot_top_losses": "graft.insight.plots",
    "prediction_figures": "graft.insight.plots",
    "read_results": "graft.insight.plots",
    "augmented_batch": "graft.insight.showbatch",
    "show_batch": "graft.insight.showbatch",
    "GradCAMUnavailable": "graft.insight.gradcam",
    "grad_cam": "graft.insight.gradcam",
    "target_layer": "graft.insight.gradcam",
    "CSS": "graft.insight.report",
    "FIGURES": "graft.insight.report",
    "IMBALANCE_RATIO": "graft.insight.report",
    "MAX_SKIPPED_LISTED": "graft.insight.report",
    "REPORT_FILE": "graft.insight.report",
    "render_report": "graft.insight.report",
    "write_report": "graft.insight.report",
    "write_run_report": "graft.insight.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
