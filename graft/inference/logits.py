"""Logits of many images through a :class:`graft.inference.Classifier`, with the numerics of training's val phase:
decoded on threads ahead of the model, in the same batches, or read back from the feature store a frozen run's val
phase used."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.core import atomic
from graft.core.device import autocast
from graft.features.store import FeatureStore, body_key, file_identity, planned_engine, store_key


def compute_logits(
    clf: Any, paths: Sequence[Path], *, batch_size: int
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Logits of the images at ``paths`` in batches of ``batch_size``, through ``clf.logits`` with the eval
    transform (the numerics of training's val phase; with ``clf.tta``, :meth:`Classifier.predict_logits`'s average
    over the mirror too). Returns (logits of the readable ones, their positions,
    unreadable (path, reason))."""
    clf.prepare()  # before the decoding threads start (see FloatClassifier.prepare)
    chunks, kept, unreadable = [], [], []
    for batch in clf.batches(paths, batch_size=batch_size):
        unreadable += batch.unreadable
        if batch.images is not None:
            chunks.append(clf.predict_logits(batch.images).numpy())
            kept += batch.positions
    n_classes = len(clf.classes)
    logits = np.concatenate(chunks) if chunks else np.zeros((0, n_classes), dtype=np.float32)
    return logits.astype(np.float32), kept, unreadable


def stored_val_logits(clf: Any, run_dir: Path, paths: Sequence[Path], *, batch_size: int) -> np.ndarray | None:
    """Logits from the features that a frozen run stored for its val phase, or None when they are not all there.

    In frozen mode with stored features, training's val accuracy is the head applied to these very rows (in
    batches of ``batch_size``), so this reproduces it by construction and skips the backbone (the feature store
    is only read here, never written). The rows are those of the engine this process would compute them with
    (:func:`graft.features.planned_engine`), as training read and wrote them. A classifier without a float head
    for stored features (an int8 run, whose body is part of its compiled program) never reads them.
    """
    members = getattr(clf, "members", None)
    if members is not None and not clf.tta:  # an ensemble: each member's stored rows, probabilities averaged
        parts = [stored_val_logits(m, m.run_dir, paths, batch_size=batch_size) for m in members]
        if any(p is None for p in parts):
            return None
        log_probs = torch.log_softmax(torch.from_numpy(np.stack(parts)), dim=2)
        return (torch.logsumexp(log_probs, dim=0) - math.log(len(parts))).numpy()
    model = clf.float_model()
    meta, config = clf.meta, atomic.read_json_or(run_dir / "config.json", {})
    sha = (meta.pretrained or {}).get("sha256")
    if (
        model is None
        or clf.tta
        or meta.mode != "freeze"
        or not sha
        or not config.get("cache_features", False)
        or not paths
    ):
        return None
    body = body_key(meta.arch, meta.arch_kwargs, sha, clf.device.type)
    key = store_key(**body, preprocess=clf.preprocess, view=0, engine=planned_engine(clf.device))
    try:
        found, missing = FeatureStore(key).lookup([file_identity(p) for p in paths])
    except OSError:
        return None
    if missing:
        return None
    features = torch.from_numpy(np.stack([found[i] for i in range(len(paths))]))
    head = model.head.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            with autocast(clf.device):
                chunks.append(head(features[start : start + batch_size].to(clf.device)).float().cpu())
    return torch.cat(chunks).numpy()
