"""The model side of ``graft serve``: the request limits, the decoding threads and the batching model thread.

:class:`Service` holds what a request needs (the classifier, the limits of :class:`graft.core.config.ServeConfig`, a
thread pool that decodes uploads and one :class:`Batcher` thread that runs the model); :mod:`graft.commands.serve`
puts it behind the HTTP routes. A refused request raises :class:`HTTPError`, which the app answers as
``{"detail": message}`` with its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from graft.core import atomic
from graft.core.errors import ImageError

if TYPE_CHECKING:
    import torch

    from graft.core.config import ServeConfig
    from graft.inference.classifier import Classifier

#: Statuses for the reasons :func:`graft.data.load_rgb` gives (by their start); anything else is 422.
_REASON_STATUS: tuple[tuple[str, int], ...] = (
    ("image too large", 413),
    ("empty file", 400),
    ("not an image", 415),
    ("unsupported image format", 415),
)
_DRAIN_FACTOR = 4  # an oversize body up to this many times the limit is read (and dropped) so the client sees 413


class HTTPError(Exception):
    """An answer with a 4xx status and a message (turned into ``{"detail": message}``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Batcher:
    """Runs the model for concurrent requests in one dedicated thread.

    Inputs queue up while the model is busy; each run takes everything queued (up to ``max_batch``), so a lone
    request waits for nothing and a burst shares forward passes. Requests that gave up (timeout) are dropped.
    """

    def __init__(self, clf: Classifier, *, max_batch: int) -> None:
        self.clf = clf
        self.max_batch = max_batch
        self.batches = 0
        self.images = 0
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graft-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="graft-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def logits(self, tensor: torch.Tensor) -> torch.Tensor:
        """The logits ``(classes,)`` of one preprocessed image ``(3, H, W)``."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not awaited")
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        await self._queue.put((tensor, future))
        return await future

    async def _run(self) -> None:
        import torch

        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            items = [(t, f) for t, f in items if not f.done()]
            if not items:
                continue
            try:
                batch = torch.stack([t for t, _ in items])
                out = await loop.run_in_executor(self._thread, self.clf.predict_logits, batch)
            except Exception as e:  # a bug, not a bad request: every waiting request gets a 500
                for _, f in items:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.batches += 1
            self.images += len(items)
            for i, (_, f) in enumerate(items):
                if not f.done():
                    f.set_result(out[i])


def reason_status(reason: str) -> int:
    """The HTTP status for a reason :func:`graft.data.load_rgb` or :func:`check_declared_size` gives."""
    return next((s for prefix, s in _REASON_STATUS if reason.startswith(prefix)), 422)


def check_declared_size(path: Path, max_pixels: int, max_bytes: int, *, draft: int | None = None) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, or whose decoding would take more than
    ``max_bytes`` of memory (:func:`graft.data.images.decoded_bytes`: float and 16-bit images cost more per pixel),
    before anything is decoded. ``draft``: the size a JPEG is decoded at (as :func:`graft.data.load_rgb` does).

    Only the header is read; a file Pillow cannot identify is left to :func:`graft.data.load_rgb`, which says why.
    """
    from PIL import Image

    from graft.data.images import decoded_bytes

    try:
        with Image.open(path) as im:
            w, h = im.size
            if draft and im.format in ("JPEG", "MPO"):
                im.draft("RGB", (draft, draft))
            cost = decoded_bytes(im)
    except Image.DecompressionBombError as e:  # Pillow's own limit, far above ours: still a header-only check
        m = re.search(r"\((\d+) pixels\)", str(e))
        declared = f"{int(m.group(1)):,}" if m else "too many"
        raise ImageError(path, _too_large(declared, max_pixels)) from None
    except Exception:
        return
    if w * h > max_pixels:
        raise ImageError(path, _too_large(f"{w}x{h} = {w * h:,}", max_pixels))
    if cost > max_bytes:
        raise ImageError(
            path,
            f"image too large: decoding its {w}x{h} pixels ({im.mode}) takes {cost / 1e6:,.0f} MB and this server "
            f"allows {max_bytes / 1e6:,.0f} MB per image (--max-decoded-mb). Send a smaller or 8-bit image.",
        )


def _too_large(declared: str, limit: int) -> str:
    return (
        f"image too large: it declares {declared} pixels and this server accepts at most {limit:,} "
        "(--max-pixels; possible decompression bomb). Send a smaller image."
    )


def multilabel_answer(clf: Classifier, logits: torch.Tensor) -> dict[str, Any]:
    """A multi-label run's answer: ``labels`` (those over their thresholds, most probable first), ``predictions``
    (the same with probabilities) and ``probabilities`` of every class."""
    probs = logits.float().sigmoid().tolist()
    over = sorted(((p, c) for c, p, t in zip(clf.classes, probs, clf.thresholds, strict=True) if p >= t), reverse=True)
    preds = [{"label": c, "probability": p} for p, c in over]
    return {
        "labels": [p["label"] for p in preds],
        "predictions": preds,
        "probabilities": dict(zip(clf.classes, probs, strict=True)),
    }


def decode_workers() -> int:
    """Uploads decoded at once by default: at least 2, so that one heavy image never stalls the others, and up to
    4 on more cores (each may hold up to --max-decoded-mb)."""
    from graft.inference.classifier import decode_threads

    return max(2, min(4, 2 * decode_threads()))


class Service:
    """Everything a request needs: the classifier, the limits, the decoding threads and the batcher."""

    def __init__(self, clf: Classifier, cfg: ServeConfig) -> None:
        self.clf = clf
        self.cfg = cfg
        self.top_k = min(cfg.top_k, len(clf.classes))
        self.batcher = Batcher(clf, max_batch=cfg.max_batch)
        self.decoders = ThreadPoolExecutor(
            max_workers=cfg.workers or decode_workers(), thread_name_prefix="graft-decode"
        )
        self.tmp = tempfile.TemporaryDirectory(prefix="graft-serve-")
        self.started = time.time()
        self.requests = 0
        self.model_info = self._model_info()

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.decoders.shutdown(wait=False, cancel_futures=True)
        self.tmp.cleanup()

    def _model_info(self) -> dict[str, Any]:
        meta, cfg = self.clf.meta, self.cfg
        metrics = atomic.read_json_or(self.clf.run_dir / "metrics.json")
        pretrained = meta.pretrained or {}
        return {
            "run": self.clf.run_dir.name,
            "arch": meta.arch,
            "mode": meta.mode,
            "classes": list(self.clf.classes),
            "num_classes": len(self.clf.classes),
            "head": meta.to_dict().get("head"),
            "preprocess": self.clf.preprocess.to_dict(),
            "pretrained": {"tag": pretrained.get("tag"), "source": pretrained.get("source")},
            "metrics": metrics,
            "versions": meta.versions,
            "device": str(self.clf.device),
            "tta": self.clf.tta,
            "top_k": self.top_k,
            "task": "multilabel" if self.clf.multilabel else "single",
            "thresholds": dict(zip(self.clf.classes, self.clf.thresholds, strict=True)) if self.clf.multilabel else {},
            "limits": {
                "max_upload_bytes": cfg.max_upload_bytes,
                "max_pixels": cfg.max_pixels,
                "max_decoded_bytes": cfg.max_decoded_bytes,
                "timeout_s": cfg.timeout,
                "max_batch": cfg.max_batch,
            },
        }

    # -- one request -------------------------------------------------------------------------------------------

    async def predict(self, request: Request, top_k: int | None) -> dict[str, Any]:
        start = time.perf_counter()
        data = await self._image_bytes(request)
        loop = asyncio.get_running_loop()
        tensor = await loop.run_in_executor(self.decoders, self._decode, data)
        logits = await self.batcher.logits(tensor)
        if self.clf.multilabel:  # every class over its threshold (top_k does not apply), every class's probability
            self.requests += 1
            return multilabel_answer(self.clf, logits) | {"seconds": round(time.perf_counter() - start, 4)}
        k = min(top_k or self.top_k, len(self.clf.classes))
        probs = logits.float().softmax(dim=0)
        values, indices = probs.topk(k)
        preds = [
            {"label": self.clf.classes[i], "probability": float(v)}
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
        self.requests += 1
        return {
            "label": preds[0]["label"],
            "probability": preds[0]["probability"],
            "predictions": preds,
            "seconds": round(time.perf_counter() - start, 4),
        }

    def _decode(self, data: bytes) -> torch.Tensor:
        """Bytes -> model input, with graft's file checks (content sniffing, pixel limit before decoding)."""
        fd, name = tempfile.mkstemp(dir=self.tmp.name, prefix="upload-")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            check_declared_size(
                path, self.cfg.max_pixels, self.cfg.max_decoded_bytes, draft=self.clf.preprocess.resize_size
            )
            return self.clf.tensor(path)
        except ImageError as e:
            raise HTTPError(reason_status(e.reason), f"cannot use the upload: {e.reason}") from None
        finally:
            path.unlink(missing_ok=True)

    async def _image_bytes(self, request: Request) -> bytes:
        """The uploaded file: the raw body, or the multipart field ``file`` (else the only file in the form)."""
        body = await self._read_body(request)
        if not body:
            raise HTTPError(
                400, "empty request body: send the image as the raw body or as a multipart/form-data field 'file'"
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "multipart/form-data":
            return body

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                upload = next((v for _, v in form.multi_items() if isinstance(v, UploadFile)), None)
            if upload is None:
                raise HTTPError(400, "the multipart body holds no file: send the image as the form field 'file'")
            data = await upload.read()
        finally:
            await form.close()
        if not data:
            raise HTTPError(400, "empty file: the uploaded file has 0 bytes")
        return data

    async def _read_body(self, request: Request) -> bytes:
        """The request body, at most ``max_upload_bytes``; a larger one is answered 413 (after reading up to a few
        times the limit, so that the client, still sending, receives the answer)."""
        limit = self.cfg.max_upload_bytes
        too_large = HTTPError(
            413,
            f"request body too large: this server accepts at most {limit / 1e6:g} MB (--max-upload-mb). "
            "Send a smaller image (resize or re-encode it as JPEG).",
        )
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                declared_size = int(declared)
            except ValueError:
                raise HTTPError(400, f"invalid Content-Length header {declared!r}") from None
            if declared_size > limit * _DRAIN_FACTOR:
                raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > limit * _DRAIN_FACTOR:
                break
            if not message.get("more_body", False):
                break
        if size > limit:
            raise too_large
        return b"".join(chunks)
