"""The model routes of ``graft app``: the labelling queue, the check, training, runs' results, Grad-CAM, trying an
image and the export zip.

Blocking work (a fit, the store, a forward pass, an export) runs in FastAPI's thread pool (plain ``def`` routes, or
``run_in_threadpool``); training and the check run in their own threads and report through the event stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from graft.commands.app.jobs import JobBusy
from graft.commands.app.records import NotFoundError
from graft.core.errors import ImageError

#: Bytes of an image sent to /api/try when the config says nothing.
DEFAULT_UPLOAD_BYTES = 20_000_000
DEFAULT_MAX_PIXELS = 40_000_000


class TrainBody(BaseModel):
    """``POST /api/train``; a form's empty fields ("") mean the defaults (checked by
    :func:`graft.commands.app.jobs.train_settings`)."""

    arch: str | None = None
    mode: str | None = None
    epochs: int | str | None = None
    auto: bool = False
    budget: float | str | None = None


def _need(worker: Any, what: str) -> Any:
    if worker is None:
        raise HTTPException(503, f"this app runs without its {what}: start it with graft app")
    return worker


def _device(ctx: Any) -> str:
    return str(getattr(ctx.trainer, "device", "auto"))


def run_dir(ctx: Any, name: str) -> Path:
    """The directory of one of the project's runs that has a model; 404 otherwise (a name never reaches the
    file system unless the store knows it)."""
    try:
        row = ctx.store.run(name)
    except NotFoundError as e:
        raise HTTPException(404, str(e)) from None
    folder = Path(row.dir)
    if not (folder / "model.json").is_file():
        raise HTTPException(404, f"run {name} has no model yet ({row.status}): wait for its training to finish")
    return folder


def run_item(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "status": row.status,
        "created": row.created,
        "settings": row.settings,
        "metrics": row.metrics,
    }


def pool_queue(store: Any, limit: int) -> list[dict[str, Any]]:
    """The pool in id order, as the queue is before any model."""
    rows = sorted(store.pool(), key=lambda r: r.id)[:limit]
    return [
        {"id": r.id, "name": Path(r.path).name, "suggestion": None, "confidence": None, "rank": i}
        for i, r in enumerate(rows, 1)
    ]


def add_model_routes(app: FastAPI, ctx: Any) -> None:
    """The queue, the model, the check and training."""

    @app.get("/api/queue")
    def queue(limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        if ctx.learner is None:
            return {"model": {"status": "none", "labelled": 0, "version": 0}, "items": pool_queue(ctx.store, limit)}
        return {"model": ctx.learner.status(), "items": ctx.learner.queue(limit)}

    @app.post("/api/model/refresh")
    def refresh() -> dict[str, Any]:
        learner = _need(ctx.learner, "model")
        learner.refresh()
        return {"model": learner.status()}

    @app.post("/api/check")
    def start_check() -> dict[str, Any]:
        checker = _need(ctx.checker, "check")
        try:
            checker.start()
        except JobBusy as e:
            raise HTTPException(409, str(e)) from None
        return checker.result()

    @app.get("/api/check")
    def check() -> dict[str, Any]:
        return _need(ctx.checker, "check").result()

    @app.post("/api/train")
    def train(body: TrainBody) -> dict[str, Any]:
        trainer = _need(ctx.trainer, "training")
        try:
            name = trainer.start(body.model_dump())
        except JobBusy as e:
            raise HTTPException(409, str(e)) from None
        return {"run": name}

    @app.post("/api/train/cancel")
    def cancel() -> dict[str, Any]:
        return {"cancelled": _need(ctx.trainer, "training").cancel()}

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        return {"items": [run_item(r) for r in ctx.store.runs()]}

    add_run_routes(app, ctx)


def add_run_routes(app: FastAPI, ctx: Any) -> None:
    """What is done with a trained run: results, Grad-CAM, trying an image, the export zip."""
    import graft.commands.app.results as res

    @app.get("/api/runs/{name}/results")
    def results(name: str) -> dict[str, Any]:
        return res.results(run_dir(ctx, name), ctx.store, device=_device(ctx))

    @app.get("/api/runs/{name}/gradcam/{image_id}")
    def gradcam(name: str, image_id: int) -> Response:
        from graft.insight.gradcam import GradCAMUnavailable

        folder = run_dir(ctx, name)
        try:
            path = Path(ctx.store.image(image_id).path)
        except NotFoundError as e:
            raise HTTPException(404, str(e)) from None
        try:
            png = res.gradcam_png(folder, path, device=_device(ctx))
        except GradCAMUnavailable as e:
            raise HTTPException(422, str(e)) from None
        except ImageError as e:
            raise HTTPException(_image_status(e), f"cannot read {path.name}: {e.reason}") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/try")
    async def try_image(request: Request, run: str | None = None, gradcam: int = Query(0, ge=0, le=1)) -> Any:
        name = run or _newest_run(ctx)
        folder = run_dir(ctx, name)
        data = await _image_bytes(request, _upload_limit(ctx))
        try:
            answer = await run_in_threadpool(
                res.try_image,
                folder,
                data,
                gradcam=bool(gradcam),
                max_pixels=int(getattr(ctx.cfg, "max_pixels", DEFAULT_MAX_PIXELS)),
                device=_device(ctx),
            )
        except ImageError as e:
            raise HTTPException(_image_status(e), f"cannot use the image: {e.reason}") from None
        return JSONResponse(answer | {"run": name}, headers={"Cache-Control": "no-store"})

    @app.get("/api/runs/{name}/export")
    def export(name: str, int8: int = Query(0, ge=0, le=1)) -> FileResponse:
        zip_path = res.export_zip(ctx.store, run_dir(ctx, name), bool(int8))
        filename = f"{name}-int8.zip" if int8 else f"{name}.zip"
        return FileResponse(zip_path, media_type="application/zip", filename=filename)


def _newest_run(ctx: Any) -> str:
    done = [r for r in ctx.store.runs() if r.status == "done"]
    if not done:
        raise HTTPException(404, "no trained run yet: train one on the Train page first")
    return max(done, key=lambda r: r.created).name


def _upload_limit(ctx: Any) -> int:
    mb = getattr(ctx.cfg, "max_upload_mb", None)
    return int(mb * 1_000_000) if mb else DEFAULT_UPLOAD_BYTES


#: Statuses of the reasons :func:`graft.data.load_rgb` gives (by their start), as graft serve answers them.
_REASON_STATUS = (("image too large", 413), ("empty file", 400), ("not an image", 415), ("unsupported image", 415))


def _image_status(e: ImageError) -> int:
    return next((status for start, status in _REASON_STATUS if e.reason.startswith(start)), 422)


async def _image_bytes(request: Request, limit: int) -> bytes:
    """The image of a request: the raw body, or the multipart field ``file`` (else the form's only file)."""
    from starlette.datastructures import UploadFile

    declared = request.headers.get("content-length")
    too_large = HTTPException(413, f"the image is larger than {limit / 1e6:g} MB (--max-upload-mb): send a smaller one")
    if declared is not None and declared.isdigit() and int(declared) > 2 * limit:
        raise too_large
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                upload = next((v for _, v in form.multi_items() if isinstance(v, UploadFile)), None)
            if upload is None:
                raise HTTPException(400, "the form holds no file: send the image as the form field 'file'")
            data = await upload.read(limit + 1)
        finally:
            await form.close()
    else:
        chunks, size = [], 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
        data = b"".join(chunks)
    if len(data) > limit:
        raise too_large
    if not data:
        raise HTTPException(400, "empty image: send it as the raw body or as the multipart field 'file'")
    return data
