"""Evaluation of a multi-label run (``graft evaluate`` dispatches here when ``model.json`` says ``task:
multilabel``): mAP (the macro mean of the classes' average precision), per-class AP, and at the run's thresholds
micro and macro F1, exact-match ratio and per-class precision/recall/F1; ``evaluation.json``, ``per_class.csv`` and
``pr_curves.png`` (a precision-recall curve per class, its threshold marked).

On the run's own val split the numbers are those training saved (the same logits: stored val features or the
predict path, and the thresholds chosen on them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.core import atomic
from graft.core.errors import RunError
from graft.core.metrics import mean_average_precision, multilabel_f1, per_class_ap, pr_curve
from graft.core.rundir import read_split
from graft.core.runmetrics import RunMetrics
from graft.inference import multilabel as ml


@dataclass
class MultiLabelEvaluation:
    """Probabilities of a multi-label run on labelled images, and the metrics derived from them."""

    run_dir: Path
    out_dir: Path
    source: str
    classes: list[str]
    paths: list[Path]
    targets: np.ndarray  # (N, C) 0/1
    probs: np.ndarray  # (N, C) sigmoid probabilities
    thresholds: list[float]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    run_best_val_map: float | None = None
    features: str = "computed"
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.paths)

    @property
    def ap(self) -> list[float]:
        return per_class_ap(self.probs, self.targets)

    @property
    def map(self) -> float:
        return mean_average_precision(self.probs, self.targets)

    @property
    def f1(self) -> dict[str, Any]:
        return multilabel_f1(self.probs, self.targets, self.thresholds)

    def summary(self) -> str:
        f1 = self.f1
        lines = [
            f"mAP {self.map:.4f}  micro F1 {f1['micro_f1']:.4f}  macro F1 {f1['macro_f1']:.4f}  exact match "
            f"{f1['exact_match']:.4f}  ({self.n} images, {self.source})"
        ]
        if self.run_best_val_map is not None and self.source == "val split":
            same = "equal to" if abs(self.map - self.run_best_val_map) < 1e-9 else "DIFFERENT from"
            lines.append(f"the run's best_val_map is {self.run_best_val_map:.4f}: {same} this evaluation")
        width = max([len(c) for c in self.classes] + [5])
        lines.append(f"  {'class':<{width}}  threshold      AP  precision  recall      f1  support")
        for i, c in enumerate(self.classes):
            ap = self.ap[i]
            lines.append(
                f"  {c:<{width}}  {self.thresholds[i]:9.4f}  {ap:6.4f}  {f1['precision'][i]:9.4f}  "
                f"{f1['recall'][i]:6.4f}  {f1['f1'][i]:6.4f}  {f1['support'][i]:7d}"
            )
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} file(s) could not be read and were not evaluated:")
            lines += [f"  {p}: {reason}" for p, reason in self.unreadable[:20]]
        return "\n".join(lines)

    def per_class(self) -> list[dict[str, Any]]:
        f1, ap = self.f1, self.ap
        keys = ("precision", "recall", "f1", "support", "predicted")
        return [
            {"class": c, "threshold": self.thresholds[i], "ap": None if ap[i] != ap[i] else ap[i]}
            | {k: f1[k][i] for k in keys}
            for i, c in enumerate(self.classes)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The content of ``evaluation.json``."""
        f1 = self.f1
        predicted = self.probs >= np.asarray(self.thresholds)[None, :]
        return {
            "run_dir": str(self.run_dir),
            "task": "multilabel",
            "source": self.source,
            "n": self.n,
            "map": self.map,
            "micro_f1": f1["micro_f1"],
            "macro_f1": f1["macro_f1"],
            "exact_match": f1["exact_match"],
            "run_best_val_map": self.run_best_val_map,
            "classes": self.classes,
            "thresholds": self.thresholds,
            "per_class": self.per_class(),
            "predictions": [
                {
                    "path": str(p),
                    "true": [c for c, t in zip(self.classes, self.targets[i], strict=True) if t > 0.5],
                    "predicted": [c for c, y in zip(self.classes, predicted[i], strict=True) if y],
                    "probabilities": dict(zip(self.classes, map(float, self.probs[i]), strict=True)),
                }
                for i, p in enumerate(self.paths)
            ],
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "features": self.features,
            "seconds": round(self.seconds, 3),
            "files": {k: v.name for k, v in self.files.items()},
        }


def evaluate_multilabel(
    run_dir: Path,
    clf: Any,
    data: str | Path | None,
    *,
    out: str | Path | None,
    plots: bool,
    batch_size: int,
    log: Callable[[str], None] | None,
    logits_of: Callable[..., Any],
) -> MultiLabelEvaluation:
    """:func:`graft.insight.evaluation.evaluate` of a multi-label run (same arguments, same output folders);
    ``logits_of``: evaluate's logits (the stored val features, or through the model)."""
    started = time.perf_counter()
    paths, sets, source, out_dir = _items(run_dir, data, out, clf.classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    logits, kept, unreadable, features = logits_of(clf, run_dir, paths, val_split=data is None, batch_size=batch_size)
    metrics = RunMetrics.read(run_dir)
    result = MultiLabelEvaluation(
        run_dir=run_dir,
        out_dir=out_dir,
        source=source,
        classes=list(clf.classes),
        paths=[paths[i] for i in kept],
        targets=ml.multi_hot([sets[i] for i in kept], len(clf.classes)),
        probs=ml.sigmoid(logits).reshape(len(kept), len(clf.classes)),
        thresholds=list(clf.thresholds),
        unreadable=unreadable,
        run_best_val_map=metrics.best_val_map,
        features=features,
    )
    _write_tables(result)
    if plots and result.n:
        result.files["pr_curves.png"] = plot_pr_curves(result, out_dir / "pr_curves.png")
    result.seconds = time.perf_counter() - started
    _write_tables(result)
    if log is not None:
        log(result.summary())
    return result


def _items(
    run_dir: Path, data: str | Path | None, out: str | Path | None, classes: Sequence[str]
) -> tuple[list[Path], list[tuple[int, ...]], str, Path]:
    """(paths, label sets, source, output folder): the run's saved val split, or a table's images."""
    index = {c: i for i, c in enumerate(classes)}
    if data is None:
        saved = read_split(run_dir, "val")
        if saved is None or saved.labels is None:
            raise RunError(
                f"{run_dir} has no saved multi-label val split; pass a table: graft evaluate {run_dir} T.csv"
            )
        sets = [tuple(index[c] for c in saved.labels[rel] if c in index) for rel in saved.rels]
        return [saved.root / rel for rel in saved.rels], sets, "val split", Path(out) if out else run_dir
    data = Path(data)
    if data.suffix.lower() not in (".csv", ".tsv"):
        raise RunError(f"a multi-label run is evaluated on a .csv/.tsv table of images and labels, not on {data}")
    paths, sets = table_labels(run_dir, data, classes, multilabel=True)
    return paths, sets, str(data), Path(out) if out else run_dir / f"eval-{data.resolve().name}"


def table_labels(
    run_dir: Path, table: Path, classes: Sequence[str], *, multilabel: bool = False
) -> tuple[list[Path], list[Any]]:
    """A table's images to evaluate a run on (its val rows; every row without a split column), read with the
    run's column options, and their labels: class indices, or (``multilabel``) tuples of them."""
    from graft.data.tables import table_items

    config = atomic.read_json_or(run_dir / "config.json", {})
    options = {k: config.get(k) for k in ("path_col", "label_col", "split_col", "label_delim")}
    paths, sets = table_items(table, list(classes), multilabel=multilabel, **options)
    return paths, (sets if multilabel else [s[0] for s in sets])


def _write_tables(result: MultiLabelEvaluation) -> None:
    result.files["per_class.csv"] = result.out_dir / "per_class.csv"
    header = ["class", "threshold", "ap", "precision", "recall", "f1", "support", "predicted"]
    rows = [[("" if r[k] is None else r[k]) for k in header] for r in result.per_class()]
    atomic.write_csv(result.files["per_class.csv"], header, rows)
    result.files["evaluation.json"] = result.out_dir / "evaluation.json"
    atomic.atomic_write_json(result.files["evaluation.json"], result.to_dict())


def plot_pr_curves(result: MultiLabelEvaluation, path: Path) -> Any:
    """``pr_curves.png``: precision against recall per class, with its AP and the point of its threshold."""
    from graft.insight.figure import new_figure, save_figure

    fig = new_figure(5.5, 4.2)
    ax = fig.subplots()
    for i, c in enumerate(result.classes):
        if result.targets[:, i].sum() == 0:
            continue  # no positive image: no curve
        precision, recall = pr_curve(result.probs[:, i], result.targets[:, i])
        (line,) = ax.step(np.r_[0.0, recall], np.r_[1.0, precision], where="post", label=f"{c} (AP {result.ap[i]:.3f})")
        f1 = result.f1
        ax.plot([f1["recall"][i]], [f1["precision"][i]], "o", color=line.get_color(), ms=6)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"precision-recall per class (mAP {result.map:.3f}; dots: the thresholds)", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)


def report_rows(ev: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str], list[list[Any]]]:
    """What report.html shows of a multi-label ``evaluation.json``: the headline pairs, and the per-class table
    (header, rows)."""
    pairs = [
        ("images evaluated", f"{ev['n']} ({ev['source']})"),
        ("mAP (mean of the classes' average precision)", f"{ev['map']:.4f}"),
        ("micro F1 / macro F1 at the thresholds", f"{ev['micro_f1']:.4f} / {ev['macro_f1']:.4f}"),
        ("exact match (every label right)", f"{ev['exact_match']:.4f}"),
    ]
    rows = [
        [m["class"], f"{m['threshold']:.4f}", "" if m["ap"] is None else f"{m['ap']:.4f}", f"{m['precision']:.4f}",
         f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"], m["predicted"]]
        for m in ev["per_class"]
    ]  # fmt: skip
    return pairs, ["class", "threshold", "AP", "precision", "recall", "F1", "images", "predicted"], rows
