"""Figures: training batches, curves, confusion matrix, top losses, prediction grids and per-image predictions.

Matplotlib is imported on first use and only through ``matplotlib.figure.Figure`` (Agg canvas, no pyplot, no
display, no global state), so plotting works headless and from threads. Each figure is a small function that
writes a PNG atomically and returns its path; without a path it returns the figure, which a Jupyter notebook shows
inline (:class:`InlineFigure`: a PNG, still without pyplot).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.insight.figure import PlotError, new_figure, save_figure

_figure, _save = new_figure, save_figure  # the figure's machinery is graft.insight.figure's

WRONG = "#d62728"
RIGHT = "#2ca02c"
CELL = 2.3  # inches per image in a grid


def _hwc(image: Any) -> np.ndarray:
    """A (3, H, W) tensor (uint8 or float in [0, 1]) or an (H, W, 3) array -> (H, W, 3) array for imshow."""
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    return a


def overlay(image: Any, cam: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """``image`` (uint8) with a Grad-CAM map in [0, 1] blended over it (jet colour map): (H, W, 3) floats."""
    from matplotlib import colormaps

    base = _hwc(image).astype(np.float32)
    base = base / 255.0 if base.max() > 1.0 else base
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return np.clip((1 - alpha) * base + alpha * heat, 0, 1)


def load_crops(paths: Sequence[str | Path], preprocess: Any) -> list[Any]:
    """What the model sees of each image: :func:`graft.core.preprocess.eval_crop` (uint8 ``(3, S, S)`` tensors)."""
    from graft.core.preprocess import eval_crop
    from graft.data.images import load_rgb

    crop = eval_crop(preprocess)
    return [crop(load_rgb(p, draft=preprocess.resize_size)) for p in paths]


# ----------------------------------------------------------------------------------------------------------------
# image grids


@dataclass
class ImageItem:
    """One image of a grid: the picture, what it is and what the model said, and an optional Grad-CAM map."""

    image: Any  # uint8 (3, H, W) tensor or (H, W, 3) array
    true: str | None = None
    predicted: str | None = None
    probability: float | None = None
    loss: float | None = None
    cam: np.ndarray | None = None

    @property
    def wrong(self) -> bool:
        return self.predicted is not None and self.true is not None and self.predicted != self.true


def _frame(ax: Any, colour: str | None, width: float = 3.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(width)


def _grid(
    items: Sequence[ImageItem],
    titles: Sequence[str],
    colours: Sequence[str | None],
    path: str | Path | None,
    *,
    title: str,
    cols: int,
    note: str | None = None,
) -> Any:
    """Images in a grid (each followed by its Grad-CAM overlay when it has one), framed in ``colours``.

    The tiles are pasted as pixels (``Figure.figimage``) with their titles as figure text: one axes per image made
    the end-of-training report ~0.5 s slower for the same picture."""
    with_cams = any(it.cam is not None for it in items)
    per = 2 if with_cams else 1
    cols = max(1, min(cols, len(items)))
    rows = max(1, -(-len(items) // cols))
    # in inches: a header (title, note), then per row the image titles and the images
    lines = max([t.count("\n") + 1 for t in titles] + [1])
    title_h = 0.15 * lines + 0.1
    head = 0.45 + (0.25 if note else 0)
    height = head + rows * (CELL + title_h) + 0.1
    width = CELL * cols * per
    fig = _figure(width, height)
    fig.suptitle(title, fontsize=12, y=1 - 0.1 / height, va="top")
    if note:
        fig.text(0.5, 1 - 0.4 / height, note, ha="center", va="top", fontsize=9, color="#555555")
    gap = 0.05  # inches between tiles
    side = int((CELL - gap) * fig.dpi)
    for k, (it, text, colour) in enumerate(zip(items, titles, colours, strict=True)):
        row, col = divmod(k, cols)
        top = height - head - row * (CELL + title_h) - title_h  # top of this row's images, inches from the bottom
        panels = [(it.image, text, colour or "black", colour)]
        if with_cams:
            cam = overlay(it.image, it.cam) if it.cam is not None else None
            label = (f"Grad-CAM: {it.predicted}" if it.predicted else "Grad-CAM") if cam is not None else ""
            panels.append((cam, label, "black", None))
        for j, (image, label, text_colour, frame) in enumerate(panels):
            left = (col * per + j) * CELL + gap / 2
            if image is not None:
                fig.figimage(_tile(image, side, frame), xo=left * fig.dpi, yo=(top - CELL + gap) * fig.dpi)
            if label:
                x = (left + (CELL - gap) / 2) / width
                fig.text(x, (top + 0.04) / height, label, ha="center", va="bottom", fontsize=8.5, color=text_colour)
    if not items:
        fig.text(0.5, 0.5, "nothing to show", ha="center", va="center", fontsize=12)
    return _save(fig, path)


def _tile(image: Any, side: int, frame: str | None, border: int = 3) -> np.ndarray:
    """``image`` fitted into a white ``side`` x ``side`` square (aspect kept), framed in ``frame``: uint8 HWC."""
    from PIL import Image, ImageColor

    a = _hwc(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    im = Image.fromarray(a)
    scale = (side - 2 * border) / max(im.size)
    # PIL's bilinear filter widens with the scale when shrinking (no aliasing); tiny images are enlarged blockwise
    resample = Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.NEAREST
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)
    canvas = Image.new("RGB", (side, side), ImageColor.getrgb(frame) if frame else (255, 255, 255))
    if frame:
        canvas.paste((255, 255, 255), (border, border, side - border, side - border))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return np.asarray(canvas)


def plot_predictions(
    items: Sequence[ImageItem],
    path: str | Path | None = None,
    *,
    n_total: int | None = None,
    n_wrong_total: int | None = None,
    note: str | None = None,
    cols: int = 4,
) -> Any:
    """``predictions.png``: images titled with the predicted class and its probability; wrong ones in red,
    framed, with the true class. ``n_total``/``n_wrong_total``: the whole set the images were drawn from."""
    titles, colours = [], []
    for it in items:
        text = f"{it.predicted} ({it.probability:.2f})"
        titles.append(text + (f"\nWRONG, true: {it.true}" if it.wrong else ""))
        colours.append(WRONG if it.wrong else RIGHT)
    n_wrong = sum(it.wrong for it in items)
    title = f"Predictions: {len(items)} images, {n_wrong} wrong (red)"
    if n_total:
        title = f"Predictions: {len(items)} of {n_total} images, {n_wrong} wrong (red)"
        if n_wrong_total is not None:
            title += f"; mistakes shown on purpose: {n_wrong_total} of the {n_total} are wrong in all"
    return _grid(items, titles, colours, path, title=title, cols=cols, note=note)


def plot_top_losses(
    items: Sequence[ImageItem],
    path: str | Path | None = None,
    *,
    n_wrong: int | None = None,
    note: str | None = None,
    cols: int = 3,
) -> Any:
    """``top_losses.png``: the most confidently wrong images with true class, predicted class, probability
    and loss."""
    titles = [f"true: {it.true}\npred: {it.predicted} ({it.probability:.2f})\nloss {it.loss:.2f}" for it in items] or []
    total = f" of {n_wrong} misclassified" if n_wrong is not None else ""
    title = f"Top losses: the {len(items)} most confidently wrong images{total}"
    if not items:
        title = "Top losses: no misclassified images"
    return _grid(items, titles, [WRONG] * len(items), path, title=title, cols=cols, note=note)


def plot_batch(
    images: Sequence[Any], labels: Sequence[str], path: str | Path | None = None, *, title: str = "", cols: int = 4
) -> Any:
    """A grid of images (``(3, H, W)`` in [0, 1] or uint8) titled with their class."""
    items = [ImageItem(image=im) for im in images]
    return _grid(items, list(labels), [None] * len(items), path, title=title, cols=cols)


def plot_prediction(
    image: Any,
    predictions: Sequence[tuple[str, float]],
    path: str | Path | None = None,
    *,
    title: str = "",
    cam: np.ndarray | None = None,
    note: str | None = None,
) -> Any:
    """One image (what the model sees), its Grad-CAM overlay when given, and its top-k probabilities as bars."""
    panels = 3 if cam is not None else 2
    k = len(predictions)
    height = max(3.4, 0.35 * k + 1.6)
    fig = _figure(3.0 * panels + 1.0, height)
    axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": [1] * (panels - 1) + [1.3]})
    axes[0].imshow(_hwc(image))
    axes[0].set_title("input (centre crop)", fontsize=9)
    _frame(axes[0], None)
    if cam is not None:
        axes[1].imshow(overlay(image, cam))
        axes[1].set_title(f"Grad-CAM: {predictions[0][0]}", fontsize=9)
        _frame(axes[1], None)
    bars = axes[-1]
    labels = [name for name, _ in predictions][::-1]
    values = [p for _, p in predictions][::-1]
    colours = ["#9ecae1"] * (k - 1) + ["#3182bd"]
    bars.barh(range(k), values, color=colours)
    bars.set_yticks(range(k), labels=labels, fontsize=9)
    bars.set_xlim(0, 1.15)
    bars.set_xlabel("probability")
    for y, v in enumerate(values):
        bars.text(v + 0.01, y, f"{v:.3f}", va="center", fontsize=8)
    bars.set_title(f"top {k}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    if note:
        fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=8, color="#555555")
    bottom = (0.85 if note else 0.6) / height  # inches: tick labels and the x label of the bars
    fig.subplots_adjust(left=0.03, right=0.97, bottom=bottom, top=1 - 0.55 / height, wspace=0.35)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# curves and the confusion matrix


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a run's ``results.csv`` with numbers parsed."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    renamed = {"train_map": "train_acc", "val_map": "val_acc"}  # a multi-label run's score is its mAP
    for r in rows:
        row = {renamed.get(k, k): (v if k == "stage" else float(v)) for k, v in r.items() if v is not None}
        out.append(row | ({"score_name": "mAP"} if "val_map" in r else {}))
    return out


def plot_curves(results: str | Path | Sequence[dict[str, Any]], path: str | Path | None = None) -> Any:
    """``curves.png``: loss and accuracy (train and val) and the learning rate per epoch; the best val epoch
    is marked and stage changes (head -> all layers) drawn as dashed lines."""
    rows = read_results(results) if isinstance(results, str | Path) else list(results)
    if not rows:
        raise PlotError("no epochs to plot yet")
    epochs = [int(r["epoch"]) for r in rows]
    fig = _figure(13, 3.6)
    axes = fig.subplots(1, 3)
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_acc"], -i))
    score = rows[0].get("score_name", "accuracy") if rows else "accuracy"
    for ax, key, name in ((axes[0], "loss", "loss"), (axes[1], "acc", score)):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", ms=3, label=f"train {name}")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], "o-", ms=3, label=f"val {name}")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[1].plot([epochs[best]], [rows[best]["val_acc"]], "*", ms=14, color="#ff7f0e", zorder=5)
    axes[1].annotate(
        f"best {rows[best]['val_acc']:.4f}",
        (epochs[best], rows[best]["val_acc"]),
        textcoords="offset points",
        xytext=(0, -16),
        ha="center",
        fontsize=8,
    )
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8, loc="lower right")
    lrs = [r["lr"] for r in rows]
    axes[2].plot(epochs, lrs, "o-", ms=3, color="#9467bd")
    if min(lrs) > 0 and max(lrs) / min(lrs) > 20:
        axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    for i in range(1, len(rows)):
        if rows[i].get("stage") != rows[i - 1].get("stage"):
            for ax in axes:
                ax.axvline(epochs[i] - 0.5, color="gray", ls="--", lw=1)
            axes[0].text(epochs[i] - 0.4, 0.98, f" {rows[i].get('stage')}", transform=axes[0].get_xaxis_transform(),
                         va="top", fontsize=8, color="gray")  # fmt: skip
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.9, wspace=0.25)
    return _save(fig, path)


def plot_confusion(cm: Any, classes: Sequence[str], path: str | Path | None = None) -> Any:
    """``confusion_matrix.png``: counts and row-normalized (each true class sums to 1: recall on the diagonal)."""
    cm = np.asarray(cm)
    n = len(classes)
    side = min(max(3.2, 0.42 * n + 1.8), 16)
    fig = _figure(2 * side + 0.6, side + 0.6)
    axes = fig.subplots(1, 2)
    support = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros(cm.shape, dtype=float), where=support > 0)
    annotate = n <= 25
    size = 10 if n <= 8 else 7 if n <= 16 else 5
    for ax, values, title, fmt in (
        (axes[0], cm, f"counts ({int(cm.sum())} images)", "d"),
        (axes[1], norm, "normalized by true class", ".2f"),
    ):
        ax.imshow(values, cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-9))
        ax.set_title(title, fontsize=10)
        ticks = range(n)
        ax.set_xticks(ticks, labels=classes, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center",
                      fontsize=size)  # fmt: skip
        ax.set_yticks(ticks, labels=classes, fontsize=size)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if annotate:
            top = float(values.max()) or 1.0
            for i in range(n):
                for j in range(n):
                    v = values[i, j]
                    ax.text(j, i, format(int(v) if fmt == "d" else float(v), fmt), ha="center", va="center",
                            fontsize=size, color="white" if v > top / 2 else "black")  # fmt: skip
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.15, top=0.92, wspace=0.35)
    return _save(fig, path)


class CurvesWriter:
    """Redraws ``curves.png`` from ``results.csv`` during training, at most every ``every`` seconds, so that
    fast epochs (a head on stored features) do not pay for a figure each; a failure warns once and is ignored.
    """

    def __init__(self, run_dir: str | Path, *, every: float = 10.0, log: Callable[[str], None] | None = print) -> None:
        self.run_dir = Path(run_dir)
        self.every = every
        self.log = log
        self.last = time.monotonic()
        self.failed = False

    def __call__(self, *, force: bool = False) -> Path | None:
        """Redraw if forced or ``every`` seconds have passed since the last drawing (or the start)."""
        if self.failed or not (force or time.monotonic() - self.last >= self.every):
            return None
        try:
            path = plot_curves(self.run_dir / "results.csv", self.run_dir / "curves.png")
        except Exception as e:  # a figure must never stop a training run
            self.failed = True
            if self.log is not None:
                self.log(f"warning: curves.png not drawn ({type(e).__name__}: {e}); training goes on")
            return None
        self.last = time.monotonic()
        return path


# ----------------------------------------------------------------------------------------------------------------
# commands: predict --plot (show-batch: graft.insight.showbatch)


def prediction_figures(
    clf: Any, results: Sequence[Any], out_dir: str | Path, *, explain: bool = False
) -> dict[str, Path]:
    """One figure per successfully predicted image (``graft predict --plot``): the model's input, its top-k
    bars and, with ``explain``, a Grad-CAM overlay of the top class. Returns ``{image path: figure path}``."""
    out_dir = Path(out_dir)
    done = [r for r in results if r.error is None and r.predictions]
    crops = load_crops([r.path for r in done], clf.preprocess)
    cams: list[Any] = [None] * len(done)
    note = None
    if explain and done:
        from graft.insight.gradcam import GradCAMUnavailable, gradcam

        index = {c: i for i, c in enumerate(clf.classes)}
        targets = [index.get(r.predictions[0].label) for r in done]
        try:
            cams = list(gradcam(clf, crops, targets=None if None in targets else targets))
        except GradCAMUnavailable as e:
            note = f"Grad-CAM not shown: {e}"
    figures: dict[str, Path] = {}
    used: set[str] = set()
    for r, crop, cam in zip(done, crops, cams, strict=True):
        stem, k = Path(r.path).stem, 1
        name = stem
        while name in used:
            k += 1
            name = f"{stem}-{k}"
        used.add(name)
        preds = [(p.label, p.probability) for p in r.predictions]
        figures[r.path] = plot_prediction(
            crop, preds, out_dir / f"{name}.png", title=Path(r.path).name, cam=cam, note=note
        )
    return figures
