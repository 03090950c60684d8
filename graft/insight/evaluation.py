"""Evaluate a trained run: accuracy with a 95% confidence interval, balanced accuracy, per-class precision,
recall and F1, the confusion matrix and the top losses, written next to the run as ``evaluation.json``,
``per_class.csv`` and figures (``confusion_matrix.png``, ``top_losses.png``, ``predictions.png``).

By default the run's own val split is evaluated (the relative paths saved in ``data_report.json``, in their saved
order), with the training batch size and through :meth:`graft.inference.Classifier.logits`, i.e. the numerics of
training's val phase: the accuracy equals the run's ``best_val_acc`` exactly. A frozen run whose val features are
still in the feature store is evaluated from them (the head on the very rows its val phase used; no backbone pass),
which is what keeps the report at the end of ``graft train`` cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.core import atomic
from graft.core import checkpoint as ckpt
from graft.core.config import EvaluateConfig, from_options
from graft.core.config.fields import takes_fields
from graft.core.errors import DataError
from graft.core.metrics import (
    accuracy,
    balanced_accuracy,
    confusion_matrix,
    macro_f1,
    precision_recall_f1,
    wilson_interval,
)
from graft.core.rundir import run_split
from graft.core.runmeta import RunMeta
from graft.core.runmetrics import RunMetrics
from graft.inference.logits import compute_logits, stored_val_logits
from graft.insight.multilabel import evaluate_multilabel, table_labels


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall and F1 of one class (0 where undefined: no image predicted as / belonging to it)."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int  # images of this class
    predicted: int  # images predicted as this class

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.name,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
            "predicted": self.predicted,
        }


def per_class_metrics(cm: np.ndarray, classes: Sequence[str]) -> list[ClassMetrics]:
    """Per-class precision, recall and F1 (:func:`graft.core.metrics.precision_recall_f1`) of a confusion matrix
    (rows true, columns predicted), named."""
    p, r, f1, support, predicted = (a.tolist() for a in precision_recall_f1(cm))
    return [ClassMetrics(c, p[i], r[i], f1[i], support[i], predicted[i]) for i, c in enumerate(classes)]


# ----------------------------------------------------------------------------------------------------------------
# the result


@dataclass
class EvaluationResult:
    """Predictions of a run on a set of labelled images, and everything derived from them."""

    run_dir: Path
    out_dir: Path
    source: str  # "val split" or the data folder
    classes: list[str]
    paths: list[Path]  # evaluated images, in order
    labels: np.ndarray  # (N,) true class indices
    logits: np.ndarray  # (N, C) float32
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not evaluated
    best_val_acc: float | None = None  # the run's, for comparison
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)  # what was written
    grid: list[int] = field(default_factory=list)  # indices shown in predictions.png
    notes: list[str] = field(default_factory=list)  # e.g. why Grad-CAM is not shown
    explained: dict[str, bool] = field(default_factory=dict)  # figure -> has Grad-CAM overlays
    features: str = "computed"  # or "stored by training" (frozen runs: the val features of the training run)
    tta: bool = False  # test-time augmentation (the image and its mirror, probabilities averaged)

    @property
    def n(self) -> int:
        return len(self.paths)

    def _repr_html_(self) -> str:
        """Jupyter: accuracy with its interval, per-class metrics and the confusion matrix."""
        from graft.insight.notebook import evaluation_html

        return evaluation_html(self)

    @property
    def predicted(self) -> np.ndarray:
        """(N,) predicted class indices: argmax of the logits, as in training."""
        return self.logits.argmax(axis=1) if self.n else np.zeros(0, dtype=np.int64)

    @property
    def probabilities(self) -> np.ndarray:
        z = self.logits.astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    @property
    def losses(self) -> np.ndarray:
        """(N,) cross-entropy of each image (natural log)."""
        if not self.n:
            return np.zeros(0)
        z = self.logits.astype(np.float64)
        m = z.max(axis=1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
        return lse - z[np.arange(self.n), self.labels]

    @property
    def correct(self) -> int:
        return int((self.predicted == self.labels).sum())

    @property
    def accuracy(self) -> float:
        return accuracy(self.labels, self.predicted)

    @property
    def accuracy_ci95(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.labels, self.predicted, len(self.classes))

    @property
    def balanced_accuracy(self) -> float:
        return balanced_accuracy(self.confusion)

    @property
    def per_class(self) -> list[ClassMetrics]:
        return per_class_metrics(self.confusion, self.classes)

    def top_losses(self, k: int = 9) -> list[int]:
        """Indices of the ``k`` misclassified images with the highest loss (the most confidently wrong)."""
        wrong = np.flatnonzero(self.predicted != self.labels)
        order = wrong[np.argsort(-self.losses[wrong], kind="stable")]
        return [int(i) for i in order[:k]]

    def item(self, i: int) -> dict[str, Any]:
        """One image's outcome: path, true and predicted class, probability of each, loss."""
        probs, pred, true = self.probabilities[i], int(self.predicted[i]), int(self.labels[i])
        return {
            "path": str(self.paths[i]),
            "true": self.classes[true],
            "predicted": self.classes[pred],
            "probability": float(probs[pred]),
            "true_probability": float(probs[true]),
            "loss": float(self.losses[i]),
            "correct": pred == true,
        }

    def summary(self) -> str:
        """Human-readable lines: accuracy with its interval, balanced accuracy, and a per-class table."""
        lo, hi = self.accuracy_ci95
        lines = [
            f"accuracy {self.accuracy:.4f} ({self.correct}/{self.n}; 95% CI {lo:.4f}-{hi:.4f})  "
            f"balanced accuracy {self.balanced_accuracy:.4f}  ({self.source}{', TTA' if self.tta else ''})"
        ]
        if self.best_val_acc is not None and self.source == "val split" and self.tta:
            lines.append(f"the run's best_val_acc (no TTA) is {self.best_val_acc:.4f}")
        elif self.best_val_acc is not None and self.source == "val split":
            same = "equal to" if self.accuracy == self.best_val_acc else "DIFFERENT from"
            lines.append(f"the run's best_val_acc is {self.best_val_acc:.4f}: {same} this evaluation")
        width = max([len(c) for c in self.classes] + [5])
        lines.append(f"  {'class':<{width}}  precision  recall      f1  support")
        for m in self.per_class:
            lines.append(f"  {m.name:<{width}}  {m.precision:9.4f}  {m.recall:6.4f}  {m.f1:6.4f}  {m.support:7d}")
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} file(s) could not be read and were not evaluated:")
            lines += [f"  {p}: {reason}" for p, reason in self.unreadable[:20]]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``evaluation.json``."""
        lo, hi = self.accuracy_ci95
        per_class = self.per_class
        return {
            "run_dir": str(self.run_dir),
            "source": self.source,
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "accuracy_ci95": [lo, hi],
            "ci_method": "Wilson score interval",
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": macro_f1(self.confusion),
            "run_best_val_acc": self.best_val_acc,
            "classes": self.classes,
            "per_class": [m.to_dict() for m in per_class],
            "confusion_matrix": self.confusion.tolist(),
            "confusion_matrix_axes": "rows: true class, columns: predicted class",
            "top_losses": [self.item(i) for i in self.top_losses(len(self.paths))],
            "predictions_figure": [self.item(i) for i in self.grid],
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "features": self.features,
            "tta": self.tta,
            "notes": self.notes,
            "explained": self.explained,
            "seconds": round(self.seconds, 3),
            "files": {k: v.name for k, v in self.files.items()},
        }


# ----------------------------------------------------------------------------------------------------------------
# which images


def folder_items(data: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Images of ``data``: a folder of class folders (every image is used), or a dataset with train/ and val/
    (its val folder is used). Class folders must be among the model's classes."""
    from graft.data.samples import is_folder
    from graft.inference.paths import expand_paths

    data = Path(data)
    folder, why = is_folder(data)
    access = "give this user read and search permission on it (e.g. chmod -R u+rX {})"
    if why is not None:
        raise DataError(f"{data}: {why}; " + access.format(data))
    if not folder:
        raise DataError(f"{data} is not a folder: pass a folder with one sub-folder per class (e.g. DATA/ants/*.jpg)")

    def subdirs(folder: Path) -> dict[str, Path]:
        try:
            entries = sorted(folder.iterdir())
        except OSError as e:
            raise DataError(f"cannot read the folder {folder}: {e.strerror or e}; " + access.format(folder)) from None
        kinds = {d: is_folder(d) for d in entries if not d.name.startswith(".")}
        unreadable = [f"{d.name}: {why}" for d, (_, why) in kinds.items() if why is not None]
        if unreadable and not any(is_dir for is_dir, _ in kinds.values()):
            raise DataError(f"no class folder of {folder} can be read ({unreadable[0]}); " + access.format(folder))
        return {d.name: d for d, (is_dir, _) in kinds.items() if is_dir}

    dirs = subdirs(data)
    lower = {k.lower(): v for k, v in dirs.items()}
    vals = [lower[n] for n in ("val", "valid", "validation") if n in lower]
    if "train" in lower and vals and not set(dirs) <= set(classes):
        data, dirs = vals[0], subdirs(vals[0])
    unknown = sorted(set(dirs) - set(classes))
    if unknown or not dirs:
        raise DataError(
            f"{data} must hold one folder per class, named as the model's classes ({', '.join(classes)}); "
            + (f"found unknown folder(s) {', '.join(unknown)}" if unknown else "found no class folders")
        )
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for name, folder in dirs.items():
        files = expand_paths([folder])
        paths += files
        labels += [index[name]] * len(files)
    if not paths:
        raise DataError(f"no files found in the class folders of {data}")
    return paths, labels


# ----------------------------------------------------------------------------------------------------------------
# evaluate


# long: thirteen documented arguments, and the one path from a run to its evaluation files
@takes_fields(EvaluateConfig, "run", "data")
def evaluate(
    run_dir: str | Path,
    /,
    data: str | Path | None = None,
    *,
    explain_predictions: bool | None = None,
    grid: int = 16,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> EvaluationResult:
    """Evaluate a run and write ``evaluation.json``, ``per_class.csv`` and (``plots``) the figures.

    Args:
        run_dir: a run directory written by ``graft train``.
        data: images to evaluate: a folder of class folders, or a dataset with train/ and val/ (its val folder).
            Default: the run's own val split, whose accuracy then equals the run's ``best_val_acc`` (from the
            stored val features when a frozen run's are all still there, else through the backbone; for an int8
            run, its ``int8_val_acc``, through the int8 program).
        explain_predictions: Grad-CAM on the prediction grid too (default: as ``explain``).
        grid: how many images the prediction grid shows.
        log: where progress lines go (default: nowhere).
        **options: the fields of :class:`graft.core.config.EvaluateConfig` (``graft evaluate --help``), with its
            defaults: ``out`` (default: ``run_dir`` for the val split, else ``run_dir/eval-<data name>``),
            ``plots`` (``confusion_matrix.png``, ``top_losses.png`` and ``predictions.png``; needs matplotlib),
            ``explain`` (Grad-CAM overlays on the top-loss and prediction figures), ``top_losses`` (how many of
            the most confidently wrong images the top-loss figure shows), ``batch_size`` (default: the run's
            training batch size, the same batches as its val phase), ``device``, ``tta`` (test-time augmentation;
            None: off; on the val split, recorded in model.json, see :func:`record_tta`); ``json`` is the
            command's output format. The command's ``--report`` is :func:`graft.insight.report.write_report`.

    Returns:
        An :class:`EvaluationResult`.
    """
    cfg = from_options(EvaluateConfig, options, run=run_dir, data=data)
    return run_evaluate(cfg, explain_predictions=explain_predictions, grid=grid, log=log)


def run_evaluate(
    cfg: EvaluateConfig,
    *,
    explain_predictions: bool | None = None,
    grid: int = 16,
    log: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """:func:`evaluate` with an :class:`EvaluateConfig` (checked when it was made)."""
    from graft.inference.loading import load

    started = time.perf_counter()
    run_dir, data, out, plots, explain, tta = cfg.run, cfg.data, cfg.out, cfg.plots, cfg.explain, cfg.tta
    clf = load(run_dir, device=cfg.device, prepare=False, tta=bool(tta))  # stored val features need only the head
    config = atomic.read_json_or(run_dir / "config.json", {})
    metrics = RunMetrics.read(run_dir)
    batch_size = cfg.batch_size or int(config.get("batch_size", 32))
    if clf.multilabel:  # mAP, F1 at the run's thresholds, PR curves (graft.insight.multilabel)
        return evaluate_multilabel(
            run_dir, clf, data, out=out, plots=plots, batch_size=batch_size, log=log, logits_of=_logits
        )
    paths, labels, source, out_dir = _items_and_out_dir(run_dir, data, out, clf.classes)
    out_dir.mkdir(parents=True, exist_ok=True)

    logits, kept, unreadable, features = _logits(clf, run_dir, paths, val_split=data is None, batch_size=batch_size)
    result = EvaluationResult(
        run_dir=run_dir,
        out_dir=out_dir,
        source=source,
        classes=list(clf.classes),
        paths=[paths[i] for i in kept],
        labels=np.asarray([labels[i] for i in kept], dtype=np.int64),
        logits=logits,
        unreadable=unreadable,
        best_val_acc=metrics.best_val_acc,
        features=features,
        tta=clf.tta,
    )
    record_tta(run_dir, tta if data is None else None)  # measured on the run's val split: predict, serve follow
    result.grid = grid_indices(result, grid)
    write_tables(result)  # before the figures: a plotting failure leaves the numbers written
    if plots and result.n:
        from graft.insight.evaluation_figures import write_figures

        write_figures(
            result,
            clf,
            explain_top=explain,
            explain_grid=explain if explain_predictions is None else explain_predictions,
            n_top=cfg.top_losses,
        )
    result.seconds = time.perf_counter() - started
    write_tables(result)
    if log is not None:
        log(result.summary())
    return result


def _items_and_out_dir(
    run_dir: Path, data: str | Path | None, out: str | Path | None, classes: Sequence[str]
) -> tuple[list[Path], list[int], str, Path]:
    """(paths, labels, source, output folder) of :func:`evaluate`: the run's val split into ``run_dir``, or the
    images of ``data`` into ``run_dir/eval-<data name>``; ``out`` overrides the folder."""
    if data is None:
        split = run_split(run_dir, "val", classes)
        return split.paths, split.labels, "val split", Path(out) if out is not None else run_dir
    if Path(data).suffix.lower() in (".csv", ".tsv"):  # a table's val rows (every row without a split column)
        paths, labels = table_labels(run_dir, Path(data), classes)
    else:
        paths, labels = folder_items(Path(data), classes)
    out_dir = Path(out) if out is not None else run_dir / f"eval-{Path(data).resolve().name}"
    return paths, labels, str(data), out_dir


def _logits(
    clf: Any, run_dir: Path, paths: list[Path], *, val_split: bool, batch_size: int
) -> tuple[np.ndarray, list[int], list[tuple[str, str]], str]:
    """(logits, indices of the images read, unreadable files, where the features came from): a frozen run's val
    split from the features its training stored when they are all there, else through the model."""
    stored = stored_val_logits(clf, run_dir, paths, batch_size=batch_size) if val_split else None
    if stored is not None:
        return stored, list(range(len(paths))), [], "stored by training"
    # An int8 run's int8_val_acc (its best_val_acc) was measured by graft.int8.ptq.accuracy: this very
    # function on the same val paths in the same order, at the run's batch size, through the same saved
    # program, so the accuracy here equals it by construction.
    logits, kept, unreadable = compute_logits(clf, paths, batch_size=batch_size)
    return logits, kept, unreadable, "computed"


def record_tta(run_dir: Path, tta: bool | None) -> None:
    """``tta`` (unless None) into ``run_dir/model.json``: what :func:`graft.load` (predict, serve) defaults to."""
    meta = RunMeta.read(run_dir) if tta is not None else None
    if meta is not None and bool(meta.tta) != tta:
        atomic.atomic_write_json(run_dir / ckpt.META_FILE, meta.replace(tta=tta).to_dict())


def grid_indices(result: EvaluationResult, k: int, *, seed: int = 0) -> list[int]:
    """Images for the prediction grid: a seeded sample of ``k``, in order, that includes some misclassified
    ones (up to a quarter of the grid, the most confidently wrong first) so that mistakes are visible."""
    import random

    if k <= 0 or not result.n:
        return []
    wrong = result.top_losses(max(1, k // 4))
    rest = [i for i in range(result.n) if i not in set(wrong)]
    chosen = wrong + random.Random(seed).sample(rest, min(len(rest), k - len(wrong)))
    return sorted(chosen)


def write_tables(result: EvaluationResult) -> None:
    """``evaluation.json`` and ``per_class.csv`` in ``result.out_dir``."""
    result.files["per_class.csv"] = result.out_dir / "per_class.csv"
    atomic.write_csv(
        result.files["per_class.csv"],
        ["class", "precision", "recall", "f1", "support", "predicted"],
        [
            [m.name, f"{m.precision:.6f}", f"{m.recall:.6f}", f"{m.f1:.6f}", m.support, m.predicted]
            for m in result.per_class
        ],
    )
    result.files["evaluation.json"] = result.out_dir / "evaluation.json"
    atomic.atomic_write_json(result.files["evaluation.json"], result.to_dict())
