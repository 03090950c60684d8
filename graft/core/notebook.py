"""What runs, loaded classifiers and evaluations show in a Jupyter notebook (their ``_repr_html_``).

A run is shown from its own files: ``config.json``, ``model.json``, ``metrics.json``, the val evaluation that the
end-of-run report writes (``evaluation.json``: the accuracy's interval) and its figures (``curves.png``,
``confusion_matrix.png``), embedded as base64 ``<img>``. Reading the files keeps this in the lowest layer: the
training result and the loaded classifier show the figures without importing the code that draws them.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.core.runmeta import RunMeta

#: classes listed by name before "... and N more"
SHOWN_CLASSES = 12
_STYLE = (
    "<style>.graft-repr table{border-collapse:collapse;margin:4px 0}"
    ".graft-repr th,.graft-repr td{text-align:left;padding:2px 10px;border-bottom:1px solid #ddd}"
    ".graft-repr img{max-width:100%;margin:4px 0}</style>"
)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def img_tag(path: Path, alt: str) -> str:
    """``path`` (a PNG) as an ``<img>`` with the bytes inline; empty when the file is missing or unreadable."""
    try:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError:
        return ""
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}" title="{esc(alt)}">'


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """An HTML table of escaped cells: ``header`` for a table of columns; without one, label/value rows."""

    def cell(j: int, value: Any) -> str:
        tag = "th" if j == 0 and not header else "td"
        return f"<{tag}>{esc(value)}</{tag}>"

    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cell(j, c) for j, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def page(title: str, body: str) -> str:
    """A titled block of notebook output."""
    return f'<div class="graft-repr">{_STYLE}<h4>{esc(title)}</h4>{body}</div>'


def accuracy_text(
    acc: float, ci: Sequence[float] | None = None, correct: int | None = None, n: int | None = None
) -> str:
    """``0.9608 (147/153; 95% CI 0.917-0.982)``, with what is known."""
    parts = [f"{correct}/{n}"] if correct is not None and n is not None else []
    if ci is not None and len(ci) == 2:
        parts.append(f"95% CI {ci[0]:.3f}-{ci[1]:.3f}")
    return f"{acc:.4f}" + (f" ({'; '.join(parts)})" if parts else "")


def classes_text(classes: Sequence[str]) -> str:
    shown = ", ".join(classes[:SHOWN_CLASSES])
    more = f" and {len(classes) - SHOWN_CLASSES} more" if len(classes) > SHOWN_CLASSES else ""
    return f"{len(classes)}: {shown}{more}"


def run_rows(run_dir: Path, metrics: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Label/value rows of a run: architecture, mode, classes, best val accuracy with its interval, epochs, test
    accuracy (a held-out test folder), training time, run directory."""
    run_dir = Path(run_dir)
    config = atomic.read_json_or(run_dir / "config.json", {}) or {}
    meta = RunMeta.read_or_none(run_dir)
    metrics = metrics if metrics is not None else atomic.read_json_or(run_dir / "metrics.json", {}) or {}
    evaluation = atomic.read_json_or(run_dir / "evaluation.json", {}) or {}
    head = meta.head if meta is not None else None
    hidden, dropout = (head.hidden, head.dropout) if head is not None else ((), 0)
    rows = [
        ("architecture", meta.arch if meta is not None else str(config.get("arch", "?"))),
        ("mode", str(config.get("mode", "?")) + (" (int8)" if meta is not None and meta.program_file else "")),
        ("head", " -> ".join(map(str, [*hidden, "classes"])) + f", dropout {dropout}"),
        ("classes", classes_text(list(meta.classes if meta is not None else metrics.get("classes") or []))),
    ]
    best = metrics.get("best_val_acc")
    if isinstance(best, int | float):
        val_eval = evaluation if evaluation.get("source") == "val split" else {}
        ci = val_eval.get("accuracy_ci95")
        rows.append(("best val acc", accuracy_text(best, ci, val_eval.get("correct"), val_eval.get("n"))))
    if "best_epoch" in metrics:
        rows.append(("epochs", f"best {metrics['best_epoch']} of {metrics.get('epochs_run', '?')} run"))
    test = metrics.get("test_acc")
    if isinstance(test, int | float):
        rows.append(
            ("test acc", accuracy_text(test, metrics.get("test_acc_ci95")) + f", {metrics.get('n_test')} images")
        )
    if "train_seconds" in metrics:
        rows.append(("training time", f"{metrics['train_seconds']:.1f} s on {metrics.get('device', '?')}"))
    rows.append(("run dir", str(run_dir)))
    return rows


def run_html(run_dir: Path, metrics: dict[str, Any] | None = None, *, title: str, extra: Sequence[Any] = ()) -> str:
    """A run's summary table, then its curves and confusion matrix (the PNGs of its report, when written)."""
    run_dir = Path(run_dir)
    figures = img_tag(run_dir / "curves.png", "training curves") + img_tag(
        run_dir / "confusion_matrix.png", "confusion matrix of the val split"
    )
    return page(title, table([*run_rows(run_dir, metrics), *extra]) + figures)
