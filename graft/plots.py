"""``graft.plots``: the public path of :mod:`graft.insight.plots`."""

from graft.insight.plots import (
    CELL,
    RIGHT,
    WRONG,
    CurvesWriter,
    ImageItem,
    PlotError,
    load_crops,
    overlay,
    plot_batch,
    plot_confusion,
    plot_curves,
    plot_prediction,
    plot_predictions,
    plot_top_losses,
    prediction_figures,
    read_results,
)
from graft.insight.showbatch import augmented_batch, show_batch

__all__ = [
    "CELL",
    "RIGHT",
    "WRONG",
    "CurvesWriter",
    "ImageItem",
    "PlotError",
    "augmented_batch",
    "load_crops",
    "overlay",
    "plot_batch",
    "plot_confusion",
    "plot_curves",
    "plot_prediction",
    "plot_predictions",
    "plot_top_losses",
    "prediction_figures",
    "read_results",
    "show_batch",
]
