"""The app's live model: features of every image, a linear head on the labelled ones, the pool ranked for labelling.

Each image's feature is the pretrained, frozen body's pooled output, read from (and added to) graft's feature store
under the key ``graft train --mode freeze`` uses, so the app's training job and ``graft doctor`` find the rows the
learner computed, and the learner finds theirs. The head is :func:`graft.insight.suggest.fit_head` on the labelled
``train`` images (float64 L-BFGS: ~9 s from zero on 3000 images of 1280 features on 2 busy cores, hundredths of a
second from the previous head, where every fit after the first starts); its accuracy is measured on the labelled
``val`` images; the pool is ordered by :func:`graft.insight.suggest.rank` (strategy ``auto``).

Everything runs in one background thread: :meth:`Learner.refresh` asks for a fit, and so does
:meth:`Learner.note_labels` once ``retrain_every`` labels were given since the last one. The first fit extracts
every image's feature (minutes on a CPU for thousands of images; stored, so never again); a later one extracts only
images added since (uploads), then fits in seconds. A new head is published as the ``model`` event
``{version, labelled, accuracy}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
#: Images whose features are extracted between two looks at the stop flag and two progress updates.
CHUNK = 256
#: A page of the queue is read from the ranking when its images are among this many times its size of the first
#: ranked ones (the others were labelled or excluded since the fit), else from the whole pool.
LOOK_AHEAD = 4
#: Pool images that ``diverse`` (if ``auto`` ever names it) spreads out: the first page of the queue.
BATCH = 50

#: The learner thread's nice value (0 normal, 19 lowest).
BACKGROUND_NICE = 10

EventSink = Callable[[str, dict[str, Any]], None]


def background_priority() -> None:
    """Lower the calling thread's CPU priority (Linux: nice 10 for this thread and the threads it starts, such as
    the decoders of a feature pass): the server answering the page, and the browser beside it, come first while the
    learner reads thousands of images; idle cores still go to the learner."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def _no_events(kind: str, data: dict[str, Any]) -> None:
    """The default event sink: nobody listens."""


class Body:
    """The architecture's pretrained body, frozen, and the feature-store key of its rows (built at first use)."""

    def __init__(self, arch: str, device: str, cache_dir: Path | None, batch_size: int) -> None:
        from graft.core.device import pick_device
        from graft.models.backbones import get_backbone
        from graft.models.model import build_model, choose_weights

        self.device = pick_device(device)
        spec = get_backbone(arch)
        chosen = choose_weights(spec, "auto")
        self.preprocess = chosen.preprocess if chosen else spec.preprocess
        model, weights, pretrained = build_model(spec, 2, pretrained="auto")
        self.module = model.body.eval()
        self.key: dict[str, Any] | None = None
        if pretrained.sha256 is not None:  # unknown weights: rows that could never be found again are not stored
            self.key = {
                "arch": spec.name,
                "arch_kwargs": spec.arch_kwargs(weights),
                "weights_sha256": pretrained.sha256,
                "device": self.device.type,
            }
        self.cache_dir = cache_dir
        self.batch_size = batch_size

    def features(self, paths: Sequence[Path]) -> np.ndarray:
        """``(len(paths), F)`` float32 features; raises ImageError/OSError when a file cannot be read."""
        from graft.data.samples import Sample
        from graft.features.store import cached_features, extract_features

        samples = [Sample(p, 0) for p in paths]
        common: dict[str, Any] = {"device": self.device, "batch_size": self.batch_size, "desc": "app features"}
        if self.key is None:
            return extract_features(self.module, samples, self.preprocess, **common).numpy()
        feats, _ = cached_features(self.module, samples, self.preprocess, self.key, root=self.cache_dir, **common)
        return feats.numpy()

    def readable(self, path: Path) -> bool:
        from graft.core.errors import ImageError
        from graft.data.images import load_rgb

        try:
            load_rgb(path, draft=self.preprocess.resize_size)
        except (ImageError, OSError):
            return False
        return True


class Learner:
    """Features, head and ranked pool of one project's :class:`graft.commands.app.store.Store`, kept fresh by a
    background thread (:meth:`start`; :meth:`stop` at shutdown)."""

    def __init__(
        self,
        store: Any,
        *,
        arch: str = "mobilenet_v2",
        retrain_every: int = 20,
        cache_dir: Path | None = None,
        on_event: EventSink = _no_events,
        device: str = "auto",
        batch_size: int = 32,
    ) -> None:
        self.store = store
        self.arch = arch
        self.retrain_every = max(1, int(retrain_every))
        self.cache_dir = cache_dir
        self.on_event = on_event
        self.device = device
        self.batch_size = batch_size
        self._body: Body | None = None
        self._cond = threading.Condition()
        self._wanted = False
        self._stopping = False
        self._since = 0  # labels given since the last fit began
        self._thread: threading.Thread | None = None
        self._feats: dict[int, np.ndarray] = {}  # image id -> feature (only the fitting thread writes)
        self._unreadable: set[int] = set()
        self._head: Any = None
        self._head_classes: list[str] = []
        self._ranking: dict[int, int] = {}  # pool image id -> place (0 first) under the newest head
        self._order: list[int] = []  # the pool image ids in that order
        self._suggested: dict[int, tuple[str, float]] = {}  # image id -> (most probable class, its probability)
        self._model: dict[str, Any] = {"status": "none", "labelled": 0, "version": 0}

    # -- control -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; its first fit extracts every image's feature (and fits a head when it can)."""
        with self._cond:
            if self._thread is not None:
                return
            self._wanted = True
            self._thread = threading.Thread(target=self._loop, name="graft-app-learner", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to end (after the chunk of images it is on) and wait for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def refresh(self) -> None:
        """Refit now (the ``POST /api/model/refresh`` route)."""
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def note_labels(self, n: int = 1) -> None:
        """``n`` labels were given (or changed); after ``retrain_every`` of them since the last fit, refit."""
        with self._cond:
            self._since += n
            if self._since >= self.retrain_every:
                self._wanted = True
                self._cond.notify_all()

    def wait(self, version: int, timeout: float) -> bool:
        """Block until a head of at least ``version`` is published (True), or the fit failed or ``timeout``
        seconds passed (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._model["version"] >= version or self._model["status"] == "error", timeout)
            return self._model["version"] >= version

    # -- answers -----------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``{status: none|fitting|ready|error, labelled, version, accuracy?, error?, progress?}``."""
        with self._cond:
            return dict(self._model)

    def suggestion(self, image_id: int) -> tuple[str, float] | None:
        """The newest head's most probable class of an image and its probability; None before a head (or for an
        image added since, or unreadable)."""
        with self._cond:
            return self._suggested.get(image_id)

    def suggestions(self, ids: Sequence[int]) -> dict[int, tuple[str, float]]:
        """:meth:`suggestion` of each of ``ids`` that has one."""
        with self._cond:
            return {i: self._suggested[i] for i in ids if i in self._suggested}

    def queue(self, limit: int = 50) -> list[dict[str, Any]]:
        """The first ``limit`` pool images, most worth labelling first (pool order by id before any head; images
        added since the last fit come after the ranked ones): ``[{id, name, suggestion, confidence, rank}]``."""
        limit = max(0, limit)
        with self._cond:
            ranking, order, suggested = self._ranking, self._order, self._suggested
        rows = self._ranked_head(order, limit)
        if rows is None:  # every pool image listed and sorted: before a head, or most ranked ones labelled since
            last = len(ranking)
            rows = sorted(self.store.pool(), key=lambda r: (ranking.get(r.id, last), r.id))[:limit]
        items = []
        for place, row in enumerate(rows, 1):
            label, confidence = suggested.get(row.id, (None, None))
            name = Path(row.path).name
            items.append({"id": row.id, "name": name, "suggestion": label, "confidence": confidence, "rank": place})
        return items

    def _ranked_head(self, order: Sequence[int], limit: int) -> list[Any] | None:
        """The first ``limit`` ranked images still in the pool, read one by one (a page of the queue costs
        milliseconds, where listing a pool of 20k costs a third of a second); None when they are not found among
        the first :data:`LOOK_AHEAD` times ``limit`` ranked ones."""
        from graft.commands.app.records import NotFoundError

        rows: list[Any] = []
        for image_id in order[: LOOK_AHEAD * max(limit, 1)]:
            if len(rows) == limit:
                return rows
            try:
                row = self.store.image(image_id)
            except NotFoundError:
                continue
            if row.label is None and not row.excluded:
                rows.append(row)
        return rows if len(rows) == limit else None

    # -- the thread --------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        background_priority()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted or self._stopping)
                if self._stopping:
                    return
                self._wanted = False
                self._since = 0
                self._set(status="fitting")
            try:
                self.fit()
            except _Stopped:
                return
            except Exception as e:  # the app keeps serving labels; the page shows why the model is missing
                log.exception("the app's model could not be fitted")
                self._set(status="error", error=f"{type(e).__name__}: {e}")

    def _set(self, **fields: Any) -> None:
        with self._cond:
            self._model = {k: v for k, v in self._model.items() if k not in ("error", "progress")} | fields
            self._cond.notify_all()

    def fit(self) -> None:
        """One fit, in the calling thread: features of images that have none yet, then the head and the ranking
        when at least two classes have labelled train images. The labelled images come first: when many pool
        images still need features, a head is published before them (the queue then ranks the pool images that
        have features, the others follow by id), and again once they are all in."""
        labelled, pool = self.store.labelled(), self.store.pool()
        self._extract(labelled)
        missing = sum(r.id not in self._feats and r.id not in self._unreadable for r in pool)
        if missing > CHUNK:
            self._fit_head(labelled, pool)
        self._extract(pool)
        self._fit_head(labelled, pool)

    def _fit_head(self, labelled: Sequence[Any], pool: Sequence[Any]) -> None:
        """The head on the labelled train images that have features; its suggestions, ranking and ``model``
        event (nothing new when fewer than two classes have such images)."""
        class_order = [c.name for c in self.store.classes()]
        train = [r for r in labelled if r.split == "train" and r.id in self._feats and r.label in class_order]
        present = [c for c in class_order if any(r.label == c for r in train)]
        if len(present) < 2:
            self._set(status="none" if not self._head_classes else "ready", labelled=len(train))
            return
        index = {c: i for i, c in enumerate(present)}
        x = np.stack([self._feats[r.id] for r in train])
        y = np.array([index[r.label] for r in train], np.int64)
        from graft.insight.suggest import fit_head, rank

        head = fit_head(x, y, len(present), self._head if present == self._head_classes else None)
        val = [r for r in labelled if r.split == "val" and r.id in self._feats and r.label in index]
        accuracy = None
        if val:
            yv = np.array([index[r.label] for r in val], np.int64)
            accuracy = head.accuracy(np.stack([self._feats[r.id] for r in val]), yv)
        scored = [r for r in (*labelled, *pool) if r.id in self._feats]
        probs = head.probs(np.stack([self._feats[r.id] for r in scored])) if scored else np.zeros((0, len(present)))
        best = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
        suggested = {
            r.id: (present[int(k)], float(probs[i, k])) for i, (r, k) in enumerate(zip(scored, best, strict=True))
        }
        ranked = [r for r in pool if r.id in self._feats]
        order: Sequence[int] = []
        if ranked:
            pool_x = np.stack([self._feats[r.id] for r in ranked])
            order = rank(head.probs(pool_x), pool_x, strategy="auto", n=BATCH, labelled=x).tolist()
        with self._cond:
            self._head, self._head_classes = head, present
            self._suggested = suggested
            self._order = [ranked[i].id for i in order]
            self._ranking = {image_id: place for place, image_id in enumerate(self._order)}
            version = self._model["version"] + 1
            model = {"status": "ready", "labelled": len(train), "version": version, "classes": present}
            self._model = model | ({"accuracy": accuracy} if accuracy is not None else {})
            self._cond.notify_all()
        self.on_event("model", {"version": version, "labelled": len(train), "accuracy": accuracy})

    def _extract(self, rows: Sequence[Any]) -> None:
        """Features of the rows that have none (an unreadable file is skipped and remembered)."""
        todo = [r for r in rows if r.id not in self._feats and r.id not in self._unreadable]
        if not todo:
            return
        if self._body is None:
            self._body = Body(self.arch, self.device, self.cache_dir, self.batch_size)
        body = self._body
        for start in range(0, len(todo), CHUNK):
            with self._cond:
                if self._stopping:
                    raise _Stopped
            self._set(status="fitting", progress={"done": start, "total": len(todo)})
            chunk = todo[start : start + CHUNK]
            feats = self._chunk_features(body, chunk)
            for row, f in feats.items():
                self._feats[row] = f

    def _chunk_features(self, body: Body, chunk: Sequence[Any]) -> dict[int, np.ndarray]:
        from graft.core.errors import ImageError

        try:
            return dict(zip([r.id for r in chunk], body.features([Path(r.path) for r in chunk]), strict=True))
        except (ImageError, OSError):  # a file changed since it was imported: find it, keep the others
            good = [r for r in chunk if body.readable(Path(r.path))]
            self._unreadable |= {r.id for r in chunk} - {r.id for r in good}
            if not good:
                return {}
            return dict(zip([r.id for r in good], body.features([Path(r.path) for r in good]), strict=True))


class _Stopped(Exception):
    """The learner is stopping: the fit in progress ends."""
