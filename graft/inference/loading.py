"""Load a run and classify images: ``graft.load(run_dir).predict(images, top_k=5)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.core import atomic
from graft.core import checkpoint as ckpt
from graft.core.device import pick_device
from graft.core.errors import ArchitectureError, RunError
from graft.core.runmeta import RunMeta, field_error
from graft.inference.classifier import Classifier
from graft.inference.ensemble import load_ensemble
from graft.inference.float_classifier import FloatClassifier
from graft.inference.int8_classifier import load_int8

if TYPE_CHECKING:
    from graft.models.backbones import BackboneSpec


def is_int8(meta: RunMeta | dict[str, Any]) -> bool:
    """Whether ``meta`` (a run's ``model.json``, read or as a dict) describes an int8 run (``graft quantize``,
    ``graft train --int8``, ``--mode qat``): their writer (:func:`graft.int8.ptq.finish_int8_run`) records the
    program file and a ``quantization`` block with its format (:attr:`RunMeta.is_int8`)."""
    return (meta if isinstance(meta, RunMeta) else RunMeta.from_dict(meta)).is_int8


def read_meta(run_dir: Path) -> RunMeta | None:
    """``run_dir/model.json``, checked; None when it is missing or not a JSON object (a float run's loader then
    recovers a missing one from the weights file and refuses any other, see :func:`graft.core.checkpoint.load_model`).
    A JSON object with a wrong field is a RunError naming the field."""
    meta = atomic.read_json_or(run_dir / ckpt.META_FILE)
    return RunMeta.from_dict(meta, source=run_dir / ckpt.META_FILE) if isinstance(meta, dict) else None


def registered(meta: RunMeta, run_dir: Path) -> BackboneSpec:
    """The backbone registry's spec of ``meta.arch``: a run names an architecture graft builds, or it is refused."""
    from graft.models.backbones import get_backbone

    try:
        return get_backbone(meta.arch)
    except ArchitectureError as e:
        raise field_error(run_dir / ckpt.META_FILE, "arch", f"names no architecture graft builds ({e})") from None


def load(
    run_dir: str | os.PathLike[str], *, device: str = "auto", prepare: bool = True, tta: bool | None = None
) -> Classifier:
    """Rebuild a trained model from its run directory (``model.json`` + ``model.safetensors``; no pickle).

    ``prepare=False`` leaves the body's runner to :meth:`Classifier.prepare` (for callers that may need only the
    head). ``tta`` turns test-time augmentation on or off (:meth:`Classifier.predict_logits`); None keeps what
    ``model.json`` records."""
    clf = _load(Path(run_dir), device=device, prepare=prepare)
    if tta is not None:
        clf.tta = tta
    return clf


def _load(run_dir: Path, *, device: str, prepare: bool) -> Classifier:
    from graft.models.model import build_for_inference

    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist; pass a folder written by graft train")
    meta = read_meta(run_dir)
    if meta is not None and meta.is_int8:
        return load_int8(run_dir, meta, device=device)
    if meta is not None and meta.is_ensemble:  # graft train --auto --ensemble K: members loaded as runs
        clf = load_ensemble(run_dir, meta, device=device, load_member=load)
        return clf.prepare() if prepare else clf
    found, state = ckpt.load_model(run_dir)  # sha256 verified; a crash between the two writes is resolved
    meta = RunMeta.from_dict(found, source=run_dir / ckpt.META_FILE)
    if meta.format != ckpt.FORMAT:
        raise RunError(f"{run_dir / ckpt.META_FILE} has format {meta.format!r}; this graft reads {ckpt.FORMAT}")
    if meta.head is None:
        raise field_error(run_dir / ckpt.META_FILE, "head", "is null (only an ensemble has no head of its own)")
    spec = registered(meta, run_dir)
    model = build_for_inference(spec, len(meta.classes), meta.head, meta.builder_kwargs())
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunError(f"{run_dir / ckpt.MODEL_FILE} does not fit the model described in model.json: {e}") from None
    dev = pick_device(device)
    return FloatClassifier(model.to(dev), meta, dev, run_dir, prepare=prepare)
