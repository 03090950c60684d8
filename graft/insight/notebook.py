"""What an evaluation shows in a Jupyter notebook (``EvaluationResult._repr_html_``): its accuracy with the
interval, per-class precision/recall/F1 and the confusion matrix (the PNG it wrote, else a table of counts)."""

from __future__ import annotations

from typing import Any

from graft.core.notebook import accuracy_text, img_tag, page, table


def evaluation_html(result: Any) -> str:
    """The HTML of an :class:`graft.insight.evaluation.EvaluationResult`."""
    rows: list[tuple[str, str]] = [
        ("images", f"{result.n} of {result.source}"),
        ("accuracy", accuracy_text(result.accuracy, result.accuracy_ci95, result.correct, result.n)),
        ("balanced accuracy", f"{result.balanced_accuracy:.4f}"),
    ]
    if result.best_val_acc is not None:
        rows.append(("run's best val acc", f"{result.best_val_acc:.4f}"))
    if result.unreadable:
        rows.append(("not evaluated", f"{len(result.unreadable)} unreadable file(s)"))
    rows += [("run dir", str(result.run_dir)), ("written to", str(result.out_dir))]
    per_class = table(
        [[m.name, f"{m.precision:.4f}", f"{m.recall:.4f}", f"{m.f1:.4f}", m.support] for m in result.per_class],
        header=["class", "precision", "recall", "F1", "support"],
    )
    figure = result.files.get("confusion_matrix.png")
    confusion = img_tag(figure, "confusion matrix") if figure is not None else ""
    if not confusion:  # no figure written (plots=False, or no matplotlib): the counts as a table
        counts = result.confusion.tolist()
        confusion = table(
            [[c, *row] for c, row in zip(result.classes, counts, strict=True)],
            header=["true \\ predicted", *result.classes],
        )
    return page(f"graft evaluation: {result.source}", table(rows) + per_class + confusion)
