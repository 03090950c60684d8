"""``graft.evaluation``: the public path of :mod:`graft.insight.evaluation`."""

from graft.core.metrics import Z95, balanced_accuracy, confusion_matrix, wilson_interval
from graft.insight.evaluation import (
    ClassMetrics,
    EvaluationResult,
    evaluate,
    folder_items,
    grid_indices,
    per_class_metrics,
    write_figures,
    write_tables,
)

__all__ = [
    "Z95",
    "ClassMetrics",
    "EvaluationResult",
    "balanced_accuracy",
    "confusion_matrix",
    "evaluate",
    "folder_items",
    "grid_indices",
    "per_class_metrics",
    "wilson_interval",
    "write_figures",
    "write_tables",
]
