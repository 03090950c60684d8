"""The classifier contract: what every loaded run offers (``graft.load(run_dir).predict(images, top_k=5)``).

:class:`Classifier` holds what all runs share (classes, preprocessing, decoding, top-k, streaming over files) on
top of one method a kind of run implements, :meth:`Classifier.logits`. Capabilities that only some runs have
(:meth:`Classifier.float_model`: the eager body and head, for stored features and Grad-CAM) return None where
they are unsupported, so callers never reach into a model's attributes. Float runs are
:class:`graft.inference.float_classifier.FloatClassifier`; int8 runs
:class:`graft.inference.int8_classifier.Int8Classifier`.
"""

from __future__ import annotations

import abc
import itertools
import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graft.core.errors import ImageError
from graft.core.preprocess import eval_transform
from graft.core.runmeta import RunMeta

ImageInput = str | os.PathLike[str] | Any  # a path or a PIL image


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability}


@dataclass(frozen=True)
class PathResult:
    """The predictions for one file, or why it could not be read."""

    path: str
    predictions: list[Prediction] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "predictions": [p.to_dict() for p in self.predictions or []]}


@dataclass(frozen=True)
class DecodedBatch:
    """One group of :meth:`Classifier.batches`: the readable images (None when none is), their positions in the
    input, and ``(path, reason)`` of the unreadable ones."""

    images: torch.Tensor | None
    positions: list[int]
    unreadable: list[tuple[str, str]]


class Classifier(abc.ABC):
    """A trained run, ready to predict. Build it with :func:`graft.load`.

    A kind of run sets ``meta`` (its ``model.json``, checked: :class:`graft.core.runmeta.RunMeta`), ``device`` and
    ``run_dir`` through this ``__init__`` and implements :meth:`logits`."""

    def __init__(self, meta: RunMeta, device: torch.device, run_dir: Path) -> None:
        self.meta = meta
        self.device = device
        self.run_dir = run_dir
        self.classes: list[str] = list(meta.classes)
        self.preprocess = meta.preprocess
        self._transform = eval_transform(self.preprocess)
        #: multi-label runs (sigmoid outputs): an image gets every class whose probability reaches the class's
        #: threshold (model.json's, chosen on val by training; :meth:`set_threshold` overrides them)
        self.multilabel = meta.multilabel
        self.thresholds: list[float] = [float(t) for t in meta.thresholds or [0.5] * len(self.classes)]
        #: test-time augmentation in :meth:`predict_logits` (the image and its mirror); by default what model.json
        #: records (``graft evaluate RUN --tta`` writes ``tta: true`` there)
        self.tta: bool = bool(meta.tta)

    def _repr_html_(self) -> str:
        """Jupyter: the run this classifier was loaded from (summary, curves, confusion matrix) and its device."""
        from graft.core.notebook import run_html

        return run_html(self.run_dir, title="graft classifier", extra=[("device", str(self.device))])

    @abc.abstractmethod
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (CPU float32) of a preprocessed batch ``(B, 3, H, W)``."""

    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """What predictions are made of (predict, evaluate, serve): :meth:`logits`, or with :attr:`tta` the
        log-mean of the probabilities of the image and of its horizontal mirror (see :func:`tta_logits`)."""
        if self.tta and self.multilabel:  # sigmoid outputs: the mean of the two views' probabilities, as logits
            mean = (self.logits(batch).float().sigmoid() + self.logits(batch.flip(-1)).float().sigmoid()) / 2
            return torch.logit(mean, eps=1e-7)
        return tta_logits(self.logits, batch) if self.tta else self.logits(batch)

    def prepare(self) -> Classifier:
        """Build whatever runs the model before images are decoded on other threads (see
        :meth:`graft.inference.float_classifier.FloatClassifier.prepare`); nothing for runs that need no preparing."""
        return self

    def float_model(self) -> torch.nn.Module | None:
        """The eager float model, whose ``body`` and ``head`` can be used apart: the head on a frozen run's stored
        features (``graft evaluate``), the body's layers for Grad-CAM. None for a classifier that runs one compiled
        program with no such parts (an int8 run)."""
        return None

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 5, batch_size: int = 32
    ) -> list[list[Prediction]] | list[Prediction]:
        """Top-k predictions. One image (path or PIL image) -> a list of :class:`Prediction`; a list of
        images -> a list of such lists. An unreadable file raises :class:`graft.core.errors.ImageError`."""
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        out: list[list[Prediction]] = []
        for start in range(0, len(items), batch_size):
            batch = torch.stack([self._tensor(x) for x in items[start : start + batch_size]])
            out.extend(self._top_k(self.predict_logits(batch), top_k))
        return out[0] if single else out

    def predict_paths(
        self, paths: Iterable[Path], *, top_k: int = 5, batch_size: int = 32, workers: int | None = None
    ) -> Iterator[PathResult]:
        """Stream over files in order; a bad file yields a result with ``error`` instead of stopping.

        ``workers`` threads decode ahead of the model (default :func:`decode_threads`; 0 decodes in this thread).
        At most two batches of decoded images are held at a time, so memory stays constant however many files
        ``paths`` yields (it may be a lazy iterator, e.g. :func:`iter_paths`)."""
        pending: list[tuple[Path, torch.Tensor]] = []

        def flush() -> Iterator[PathResult]:
            if pending:
                preds = self._top_k(self.predict_logits(torch.stack([t for _, t in pending])), top_k)
                yield from (PathResult(str(p), predictions=pr) for (p, _), pr in zip(pending, preds, strict=True))
                pending.clear()

        for path, tensor, error in self.decoded(paths, workers=workers, ahead=2 * batch_size):
            if tensor is None:
                yield from flush()
                yield PathResult(str(path), error=error)
                continue
            pending.append((path, tensor))
            if len(pending) == batch_size:
                yield from flush()
        yield from flush()

    def tensor(self, image: ImageInput) -> torch.Tensor:
        """One image (a path or a PIL image) as the model's input ``(3, H, W)``: what :meth:`predict` feeds
        :meth:`logits` in a batch. An unreadable file raises :class:`graft.core.errors.ImageError`."""
        return self._tensor(image)

    def decoded(
        self, paths: Iterable[Path], *, workers: int | None = None, ahead: int = 64
    ) -> Iterator[tuple[Path, torch.Tensor | None, str | None]]:
        """``(path, tensor, None)`` or ``(path, None, reason)`` in input order, decoded by ``workers`` threads
        (default :func:`decode_threads`; 0: this thread) ``ahead`` files in advance. The one decoding loop of
        prediction, evaluation and export's verification."""

        def decode(path: Path) -> tuple[Path, torch.Tensor | None, str | None]:
            try:
                return path, self._tensor(path), None
            except ImageError as e:
                return path, None, e.reason

        n = decode_threads() if workers is None else workers
        if n <= 0:
            yield from map(decode, paths)
            return
        it = iter(paths)
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="graft-decode") as pool:
            window = deque(pool.submit(decode, p) for p in itertools.islice(it, max(1, ahead)))
            while window:
                item = window.popleft().result()
                for p in itertools.islice(it, 1):
                    window.append(pool.submit(decode, p))
                yield item

    def batches(self, paths: Sequence[Path], *, batch_size: int) -> Iterator[DecodedBatch]:
        """The images at ``paths`` in consecutive groups of ``batch_size`` positions: each group's readable images
        as one tensor, their positions, and the unreadable ones with the reason. Groups never depend on which
        files are readable, so logits computed per group are those of training's val batches."""
        stream = self.decoded(paths, ahead=2 * batch_size)
        for start in range(0, len(paths), batch_size):
            group = list(itertools.islice(stream, batch_size))
            ok = [k for k, (_, t, _) in enumerate(group) if t is not None]
            tensor = torch.stack([group[k][1] for k in ok]) if ok else None
            bad = [(str(p), e or "") for p, t, e in group if t is None]
            yield DecodedBatch(tensor, [start + k for k in ok], bad)

    def _tensor(self, image: ImageInput) -> torch.Tensor:
        from PIL import Image

        from graft.data.images import load_rgb

        if isinstance(image, Image.Image):
            return self._transform(image.convert("RGB"))
        return self._transform(load_rgb(image, draft=self.preprocess.resize_size))

    def set_threshold(self, threshold: float) -> None:
        """One probability threshold for every class of a multi-label run (``graft predict --threshold``)."""
        self.thresholds = [float(threshold)] * len(self.classes)

    def _top_k(self, logits: torch.Tensor, k: int) -> list[list[Prediction]]:
        if self.multilabel:  # every class over its threshold, most probable first (k does not apply)
            probs = torch.sigmoid(logits.float()).tolist()
            chosen = [
                sorted(((p, i) for i, p in enumerate(row) if p >= self.thresholds[i]), reverse=True) for row in probs
            ]
            return [[Prediction(self.classes[i], p) for p, i in row] for row in chosen]
        probs = logits.softmax(dim=1)
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [
            [Prediction(self.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)]
            for vs, ix in zip(values, indices, strict=True)
        ]


def tta_logits(logits: Any, batch: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: the probabilities of ``batch`` (preprocessed eval crops) and of its horizontal
    mirror, averaged, returned as log-probabilities, so that a softmax of the result gives the averaged
    probabilities (and its argmax, the prediction). ``logits`` is a classifier's :meth:`Classifier.logits`, called
    once per view with the batch as given (the plain view's numbers are those of a run without TTA).

    Only the mirror: the eval transform's centre crop is what the model was selected on, and the other crops the
    resize leaves room for (16 pixels each side at 224 of 256) cut off parts of the object for a 5x cost."""
    plain = torch.log_softmax(logits(batch).float(), dim=1)
    mirrored = torch.log_softmax(logits(batch.flip(-1)).float(), dim=1)
    return torch.logaddexp(plain, mirrored) - math.log(2)


def decode_threads() -> int:
    """Threads decoding images ahead of the model in :meth:`Classifier.predict_paths`: half the cores, 1 to 4.

    The model's own threads use every core; on 2 cores one decoding thread ran the val folder ~1.5x faster than
    none, and two were slower than one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // 2))
