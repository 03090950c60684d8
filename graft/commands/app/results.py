"""What the app shows of a trained run: its val results, Grad-CAM, a prediction for an image, the deployable zip.

Runs are loaded with graft's :func:`graft.inference.load` (the last two kept in memory, one call at a time each:
a model's forward pass is not shared between threads). The val results are computed once and kept in the run
directory as ``app-results.json``; the zips as ``app-export.zip`` / ``app-export-int8.zip``; both are recomputed
when the run's ``model.json`` is newer.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from graft.commands.app.records import AppError
from graft.core.atomic import atomic_write_json, atomic_write_text, read_json_or

RESULTS_FILE = "app-results.json"
#: The most lossy val images listed.
TOP_LOSSES = 50
#: Loaded runs kept in memory.
KEEP = 2
_LOADED: OrderedDict[tuple[str, str, float], tuple[Any, threading.Lock]] = OrderedDict()
_LOADED_LOCK = threading.Lock()

README = """{name}: an image classifier trained with graft on the labels in labels.csv.

Classify images without graft or torch (Python 3 with onnxruntime, numpy and Pillow):

    pip install -r requirements.txt
    python predict.py IMAGE...

model.onnx takes float32 NCHW images preprocessed as model.onnx.json says (predict.py does it) and returns one
logit per class (softmax them for probabilities); the class names are in model.onnx.json. The model card
(MODEL_CARD.md) says what the model was trained on and how well it does on its validation images.
"""


def _stamp(run_dir: Path) -> float:
    """When the run's model last changed (its model.json)."""
    try:
        return (run_dir / "model.json").stat().st_mtime
    except OSError:
        raise AppError(f"{run_dir.name} has no trained model (model.json): wait for its training to finish") from None


def classifier(run_dir: Path, device: str = "auto") -> tuple[Any, threading.Lock]:
    """The loaded run and the lock its callers hold while they use it."""
    from graft.inference.loading import load

    key = (str(run_dir), device, _stamp(run_dir))
    with _LOADED_LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
    clf = load(run_dir, device=device)
    with _LOADED_LOCK:
        _LOADED[key] = (clf, threading.Lock())
        while len(_LOADED) > KEEP:
            _LOADED.popitem(last=False)
        return _LOADED[key]


def _ids(store: Any) -> dict[Path, int]:
    return {Path(r.path): r.id for r in [*store.labelled(), *store.pool()]}


def results(run_dir: Path, store: Any, *, device: str = "auto") -> dict[str, Any]:
    """The run's val results: ``{classes, matrix, cells: {"t,p": [id...]}, per_class, top_losses, accuracy,
    images}``; ``matrix[t][p]`` counts val images of class t predicted p; ``cells`` the project's ids of them."""
    cache = run_dir / RESULTS_FILE
    stamp = _stamp(run_dir)
    cached = read_json_or(cache, {})
    if cached.get("model_mtime") == stamp:
        return cached
    out = compute_results(run_dir, store, device=device) | {"model_mtime": stamp}
    atomic_write_json(cache, out)
    return out


def val_logits(clf: Any, run_dir: Path, paths: list[Path]) -> tuple[np.ndarray, list[int]]:
    """The run's val logits and the positions of the images read: a frozen run's from the features its training
    stored (its val phase's very numbers, without the backbone), else through the model at the run's batch size."""
    from graft.inference.logits import compute_logits, stored_val_logits

    batch_size = int(read_json_or(run_dir / "config.json", {}).get("batch_size", 32))
    stored = stored_val_logits(clf, run_dir, paths, batch_size=batch_size)
    if stored is not None:
        return np.asarray(stored), list(range(len(paths)))
    logits, kept, _ = compute_logits(clf, paths, batch_size=batch_size)
    return np.asarray(logits), kept


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def compute_results(run_dir: Path, store: Any, *, device: str = "auto") -> dict[str, Any]:
    from graft.core.errors import RunError
    from graft.core.metrics import accuracy, confusion_matrix, precision_recall_f1
    from graft.core.rundir import run_split

    clf, lock = classifier(run_dir, device)
    try:
        split = run_split(run_dir, "val", clf.classes, skip_unknown=True, fix="the images must stay where they were")
    except RunError as e:
        raise AppError(str(e)) from None
    with lock:
        logits, kept = val_logits(clf, run_dir, split.paths)
    n = len(clf.classes)
    p = _softmax(logits) if len(kept) else np.zeros((0, n))
    y = np.array([split.labels[i] for i in kept], np.int64)
    pred = p.argmax(1) if len(p) else np.zeros(0, np.int64)
    ids = _ids(store)
    image_ids = [ids.get(split.paths[i].resolve()) for i in kept]
    cm = np.asarray(confusion_matrix(y, pred, n))
    cells: dict[str, list[int]] = {}
    for t, q, i in zip(y.tolist(), pred.tolist(), image_ids, strict=True):
        if i is not None:
            cells.setdefault(f"{t},{q}", []).append(i)
    pc = precision_recall_f1(cm)
    per_class = [
        {
            "name": c,
            "precision": float(pc.precision[k]),
            "recall": float(pc.recall[k]),
            "f1": float(pc.f1[k]),
            "support": int(pc.support[k]),
        }
        for k, c in enumerate(clf.classes)
    ]
    loss = -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)) if len(y) else np.zeros(0)
    top = [j for j in np.argsort(-loss, kind="stable").tolist() if image_ids[j] is not None][:TOP_LOSSES]
    top_losses = [
        {
            "id": image_ids[j],
            "true": clf.classes[int(y[j])],
            "pred": clf.classes[int(pred[j])],
            "confidence": float(p[j, pred[j]]),
            "loss": float(loss[j]),
        }
        for j in top
    ]
    return {
        "run": run_dir.name,
        "classes": list(clf.classes),
        "matrix": cm.astype(int).tolist(),
        "cells": cells,
        "per_class": per_class,
        "top_losses": top_losses,
        "accuracy": float(accuracy(y, pred)) if len(y) else None,
        "images": len(y),
        "unreadable": len(split.paths) - len(kept),
    }


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def gradcam_png(run_dir: Path, image: Path | Any, *, device: str = "auto") -> bytes:
    """A PNG of what the run's model sees of ``image`` (a path or a PIL image) with its Grad-CAM map (for the
    predicted class) over it. Raises GradCAMUnavailable for architectures without a spatial map."""
    from graft.core.preprocess import eval_crop
    from graft.data.images import load_rgb
    from graft.insight.gradcam import gradcam
    from graft.insight.plots import overlay

    clf, lock = classifier(run_dir, device)
    pil = load_rgb(image, draft=clf.preprocess.resize_size) if isinstance(image, str | os.PathLike) else image
    crop = eval_crop(clf.preprocess)(pil)
    with lock:
        (cam,) = gradcam(clf, [crop])
    return _png(overlay(crop, cam))


def try_image(
    run_dir: Path,
    data: bytes,
    *,
    gradcam: bool = False,
    max_pixels: int = 40_000_000,
    max_decoded_bytes: int = 1_000_000_000,
    top_k: int = 5,
    device: str = "auto",
) -> dict[str, Any]:
    """``{top: [{label, probability}], gradcam: PNG data-URL or None}`` for one uploaded image. The file is
    checked as ``graft serve`` checks uploads (pixels from the header before decoding, content sniffed): an
    unusable one raises :class:`graft.core.errors.ImageError` with the reason."""
    from graft.data.images import load_rgb
    from graft.deploy.serving import check_declared_size
    from graft.insight.gradcam import GradCAMUnavailable

    clf, lock = classifier(run_dir, device)
    with tempfile.NamedTemporaryFile(prefix="graft-try-") as f:
        f.write(data)
        f.flush()
        path = Path(f.name)
        check_declared_size(path, max_pixels, max_decoded_bytes, draft=clf.preprocess.resize_size)
        pil = load_rgb(path, draft=clf.preprocess.resize_size)
    with lock:
        top = clf.predict(pil, top_k=min(top_k, len(clf.classes)))
    answer: dict[str, Any] = {"top": [t.to_dict() for t in top], "gradcam": None}  # type: ignore[union-attr]
    if gradcam:
        try:
            answer["gradcam"] = "data:image/png;base64," + base64.b64encode(
                gradcam_png(run_dir, pil, device=device)
            ).decode("ascii")
        except GradCAMUnavailable as e:
            answer["gradcam_error"] = str(e)
    return answer


def export_zip(store: Any, run_dir: Path, int8: bool = False) -> Path:
    """``RUN/app-export[-int8].zip``: model.onnx (verified as ``graft export`` verifies it; ``int8``: ONNX
    Runtime's int8 quantization, refused when it loses more than a point of val accuracy), its sidecar,
    predict.py, requirements.txt, the model card, the labels the run was trained on and a README."""
    from graft.deploy.export import export
    from graft.insight.modelcard import render_model_card

    target = run_dir / ("app-export-int8.zip" if int8 else "app-export.zip")
    if target.is_file() and target.stat().st_mtime >= _stamp(run_dir):
        return target
    with tempfile.TemporaryDirectory(prefix="app-export-", dir=run_dir) as tmp:
        folder = Path(tmp) / run_dir.name
        if int8:
            export(run_dir, format="onnx", int8=True, out=folder, log=lambda line: None)
        else:
            from graft.deploy import standalone_predict

            export(run_dir, format="onnx", out=folder / "model.onnx")
            shutil.copyfile(standalone_predict.__file__, folder / "predict.py")
            atomic_write_text(folder / "requirements.txt", "onnxruntime\nnumpy\nPillow\n")
        atomic_write_text(folder / "MODEL_CARD.md", render_model_card(run_dir))
        labels_for_export(store, run_dir, folder / "labels.csv")
        atomic_write_text(folder / "README.txt", README.format(name=run_dir.name))
        part = Path(tmp) / "export.zip"
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    z.write(file, f"{run_dir.name}/{file.relative_to(folder).as_posix()}")
        os.replace(part, target)
    return target


def labels_for_export(store: Any, run_dir: Path, out: Path) -> Path:
    """The labels the run was trained on (the copy the training job keeps), else the project's labels now."""
    from graft.commands.app.jobs import RUN_LABELS

    kept = run_dir / RUN_LABELS
    if kept.is_file():
        shutil.copyfile(kept, out)
        return out
    from graft.commands.app.labels import export_labels

    return Path(export_labels(store, out).path)
