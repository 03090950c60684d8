"""The Data and Label routes of ``graft app``: the page, the project's state, images (listed, thumbnails, files),
classes, labels and their undo, imports of folders inside the project's roots, and the event stream.

Everything under ``/api/`` answers JSON (errors ``{"detail": "..."}``); images are served by id only, never by a path
a client sends. Blocking work (the store, decoding) runs in FastAPI's thread pool.
"""

from __future__ import annotations

import dataclasses
import io
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles

from graft.commands.app.context import AppContext
from graft.commands.app.records import NotFoundError
from graft.core.atomic import atomic_write_bytes
from graft.core.errors import GraftError, ImageError
from graft.data.images import load_rgb
from graft.deploy.serving import HTTPError, reason_status

#: The page's policy: its own scripts and styles only, images from the server, blobs (uploads shown before they are
#: sent) and data URLs (Grad-CAM), the webcam's stream, requests to this server only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; connect-src 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
THUMB_SIZE = 192
FILE_SIZE = 1024
#: Seconds a browser may keep a thumbnail or an image without asking again (uploads never change; a file edited in
#: place shows within this time: its thumbnail is remade when the file is newer).
IMAGE_MAX_AGE = 3600
#: Label sources a client may send (import and undo are the server's own).
ClientSource = Literal["keyboard", "suggestion", "doctor", "data", "upload", "webcam"]

_PLACEHOLDER_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>graft app</title></head>
<body><h1>graft app</h1><p>The page's files (graft/static/app/) are not installed; the API answers under /api/.</p>
</body></html>"""


def static_dir() -> Path:
    """The folder of the page's files (``graft/static/app``)."""
    return Path(str(resources.files("graft").joinpath("static/app")))


def is_open(path: str) -> bool:
    """Paths answered without the API key: the page and its static files (they hold no project data)."""
    return path in ("/", "/favicon.ico") or path.startswith("/static/")


class _NoCacheStatic(StaticFiles):
    """The page's scripts and styles, revalidated on every load (an updated graft serves its new files)."""

    async def check_config(self) -> None:
        """A missing folder (the page's files not installed) answers 404 per file, not 500."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


# ----------------------------------------------------------------------------------------------------------------
# request bodies


class ClassName(BaseModel):
    name: str


class ClassRename(BaseModel):
    old: str
    new: str


class ClassMerge(BaseModel):
    src: str
    dst: str


class LabelBody(BaseModel):
    id: int
    label: str | None
    source: ClientSource = "keyboard"


class ExcludeBody(BaseModel):
    id: int
    excluded: bool
    source: ClientSource = "keyboard"


class ReviewBody(BaseModel):
    ids: list[int] = Field(max_length=10_000)
    source: ClientSource = "doctor"


class ImportBody(BaseModel):
    path: str
    pool: bool = False


# ----------------------------------------------------------------------------------------------------------------
# answers


def jsonable(obj: Any) -> Any:
    """A store row (dataclass), or a list of them, as JSON-ready dicts (paths as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [jsonable(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def model_info(ctx: AppContext) -> dict[str, Any]:
    """The learner's state as ``/api/project`` shows it (``status`` none before any head)."""
    if ctx.learner is None:
        return {"status": "none", "labelled": 0, "version": 0}
    return dict(ctx.learner.status())


def suggestions(ctx: AppContext, ids: list[int]) -> dict[int, tuple[str, float]]:
    """The learner's suggestion and confidence for each of ``ids`` it has one for."""
    if ctx.learner is None or not ids:
        return {}
    return dict(ctx.learner.suggestions(ids))


def image_item(row: Any, suggestion: tuple[str, float] | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": Path(row.path).name,
        "label": row.label,
        "split": row.split,
        "source": row.source,
        "excluded": bool(row.excluded),
        "reviewed": bool(row.reviewed),
        "suggestion": suggestion[0] if suggestion else None,
        "confidence": round(float(suggestion[1]), 4) if suggestion else None,
    }


def classes_answer(ctx: AppContext) -> dict[str, Any]:
    return {"classes": [{"name": c.name, "count": c.count} for c in ctx.store.classes()]}


def image_row(ctx: AppContext, image_id: int) -> Any:
    """The store's row of ``image_id`` (a :class:`NotFoundError`, answered 404, when there is none)."""
    return ctx.store.image(image_id)


# ----------------------------------------------------------------------------------------------------------------
# images


def thumbnail(ctx: AppContext, image_id: int) -> Path:
    """PROJECT/thumbs/ID.jpg (longest side :data:`THUMB_SIZE`), made on first use and again when the image's file
    is newer than it."""
    row = image_row(ctx, image_id)
    source = Path(row.path)
    thumb = ctx.cfg.project / "thumbs" / f"{image_id}.jpg"
    try:
        if thumb.stat().st_mtime >= source.stat().st_mtime:
            return thumb
    except OSError:
        pass
    thumb.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(thumb, jpeg(source, THUMB_SIZE, quality=80))
    return thumb


def jpeg(path: Path, size: int, *, quality: int) -> bytes:
    """The image at ``path`` as JPEG bytes, its longest side at most ``size``; an unusable file answers the status
    graft serve gives for the same reason."""
    try:
        im = load_rgb(path, draft=size)
    except ImageError as e:
        status = 404 if e.reason.startswith(("file not found", "broken symbolic link")) else reason_status(e.reason)
        raise HTTPError(status, f"cannot show {path.name}: {e.reason}") from None
    im.thumbnail((size, size))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# the routes


def add_page_routes(app: FastAPI) -> None:
    """``GET /`` (the page, under :data:`CONTENT_SECURITY_POLICY`), ``/static/*`` and ``/favicon.ico``."""
    directory = static_dir()
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        page = directory / "index.html"
        html = page.read_text(encoding="utf-8") if page.is_file() else _PLACEHOLDER_PAGE
        return HTMLResponse(html, headers=headers)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", _NoCacheStatic(directory=directory, check_dir=False), name="static")


def add_data_routes(app: FastAPI, ctx: AppContext) -> None:
    """The project's state and its images (listed, thumbnails, files)."""
    store = ctx.store

    @app.get("/api/project")
    def project() -> dict[str, Any]:
        training = ctx.trainer.status() if ctx.trainer is not None else None
        return {
            "name": ctx.cfg.project.resolve().name,
            "version": store.version(),
            **classes_answer(ctx),
            "counts": store.counts(),
            "retrain_every": ctx.cfg.retrain_every,
            "arch": ctx.cfg.arch,
            "model": model_info(ctx),
            "training": training,
        }

    @app.get("/api/images")
    def images(
        label: str | None = None,
        pool: bool = False,
        excluded: bool = False,
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        total, rows = store.images(label=label, pool=pool, excluded=excluded, offset=offset, limit=limit)
        hints = suggestions(ctx, [r.id for r in rows])
        return {"total": total, "items": [image_item(r, hints.get(r.id)) for r in rows]}

    @app.get("/api/images/{image_id}/thumb")
    def thumb(image_id: int) -> Response:
        data = thumbnail(ctx, image_id).read_bytes()
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": f"private, max-age={IMAGE_MAX_AGE}"})

    @app.get("/api/images/{image_id}/file")
    def file(image_id: int) -> Response:
        data = jpeg(Path(image_row(ctx, image_id).path), FILE_SIZE, quality=90)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": f"private, max-age={IMAGE_MAX_AGE}"})

    @app.get("/api/images/{image_id}")
    def image(image_id: int) -> dict[str, Any]:
        hints = suggestions(ctx, [image_id])
        return image_item(image_row(ctx, image_id), hints.get(image_id))


def add_class_routes(app: FastAPI, ctx: AppContext) -> None:
    """Add, rename, merge and delete classes (a deleted class's images go back to the pool)."""
    store = ctx.store

    @app.post("/api/classes")
    def add_class(body: ClassName) -> dict[str, Any]:
        store.add_class(body.name)
        return classes_answer(ctx)

    @app.post("/api/classes/rename")
    def rename_class(body: ClassRename) -> dict[str, Any]:
        store.rename_class(body.old, body.new)
        ctx.note_labels()
        return classes_answer(ctx)

    @app.post("/api/classes/merge")
    def merge_class(body: ClassMerge) -> dict[str, Any]:
        store.merge_class(body.src, body.dst)
        ctx.note_labels()
        return classes_answer(ctx)

    @app.post("/api/classes/delete")
    def delete_class(body: ClassName) -> dict[str, Any]:
        store.delete_class(body.name)
        ctx.note_labels()
        return classes_answer(ctx)


def add_import_routes(app: FastAPI, ctx: AppContext) -> None:
    """Import a folder again (new files only), and the event stream."""
    store = ctx.store

    @app.post("/api/import")
    def import_folder(body: ImportBody) -> dict[str, Any]:
        """Import (again) a folder or table inside the project's roots: new files only."""
        path = Path(body.path).expanduser()
        if not store.allowed(path):
            raise HTTPError(
                403,
                f"{body.path} is outside the project's folders (the project, --data and --pool): restart graft app "
                "with --data or --pool naming it",
            )
        report = store.import_pool(path) if body.pool else store.import_data(path)
        ctx.note_labels(0 if body.pool else report.added)
        return {"report": report.to_dict(), **classes_answer(ctx)}

    @app.get("/api/events")
    async def events() -> StreamingResponse:
        return ctx.events.response()


def add_label_routes(app: FastAPI, ctx: AppContext) -> None:
    """Labels, exclusions, reviews, undo and the action log."""
    store = ctx.store

    @app.post("/api/label")
    def label(body: LabelBody) -> dict[str, Any]:
        image_row(ctx, body.id)
        action = store.set_label(body.id, body.label, source=body.source)
        ctx.note_labels()
        row = store.image(body.id)
        return {"action": jsonable(action), "image": image_item(row, suggestions(ctx, [body.id]).get(body.id))}

    @app.post("/api/exclude")
    def exclude(body: ExcludeBody) -> dict[str, Any]:
        image_row(ctx, body.id)
        action = store.set_excluded(body.id, body.excluded, source=body.source)
        ctx.note_labels()
        return {"action": jsonable(action)}

    @app.post("/api/review")
    def review(body: ReviewBody) -> dict[str, Any]:
        return {"action": jsonable(store.set_reviewed(body.ids, source=body.source))}

    @app.post("/api/undo")
    def undo() -> dict[str, Any]:
        action = store.undo()
        if action is not None:
            ctx.note_labels()
        return {"action": jsonable(action)}

    @app.get("/api/actions")
    def actions(limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        return {"items": jsonable(store.actions(limit))}


def add_error_handlers(app: FastAPI) -> None:
    """A :class:`GraftError` (a bad class name...) answers 400 with its message, which says the fix; an unknown
    image or class 404."""

    @app.exception_handler(GraftError)
    async def graft_error(request: Request, exc: GraftError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404 if isinstance(exc, NotFoundError) else 400)
