"""``POST /api/upload``: images (or .zip files of images) sent from the page, copied into PROJECT/images/.

The checks are graft serve's, per image: at most ``--max-upload-mb`` bytes (413), the declared pixels at most
``--max-pixels``, read from the header before decoding (413), the content sniffed and fully decoded by graft's
decoder, never trusting a name or a declared type (415 not an image, 422 broken). A zip is recognised by its
content; its members are checked one by one, and no name from it is used on disk (each image gets a new random
name); a zip holding an absolute path or ``..`` is refused whole (400). The answer lists what was added and what was
skipped and why; when nothing could be added it carries the first refusal's status.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from graft.commands.app.context import AppContext
from graft.core.errors import ImageError
from graft.data.images import SCAN_DRAFT, load_rgb
from graft.deploy.serving import HTTPError, check_declared_size, reason_status

#: Files (form parts) one upload request may carry.
MAX_FILES = 1000
#: Members one zip may hold (images or not).
MAX_ZIP_MEMBERS = 20_000
#: A request (and a zip's uncompressed images together) may be this many times ``--max-upload-mb``.
REQUEST_FACTOR = 50
#: Memory one image may take to decode (graft serve's default ``--max-decoded-mb``).
MAX_DECODED_BYTES = 512_000_000
#: Pillow format -> the extension of the copy in PROJECT/images/.
EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tif",
    "WEBP": "webp",
    "PPM": "ppm",
    "AVIF": "avif",
    "JPEG2000": "jp2",
}


@dataclass
class Outcome:
    """What became of one upload request's images."""

    added: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    first_status: int | None = None

    def skip(self, name: str, reason: str, status: int) -> None:
        self.skipped.append({"name": name, "reason": reason})
        self.first_status = self.first_status or status


@dataclass(frozen=True)
class Limits:
    file_bytes: int
    max_pixels: int

    @property
    def request_bytes(self) -> int:
        return self.file_bytes * REQUEST_FACTOR

    def too_large(self, what: str) -> str:
        return (
            f"{what} too large: this server accepts at most {self.file_bytes / 1e6:g} MB per image "
            f"(--max-upload-mb) and {self.request_bytes / 1e6:g} MB per upload; send fewer or smaller images"
        )


def limits(ctx: AppContext) -> Limits:
    return Limits(file_bytes=int(ctx.cfg.max_upload_mb * 1_000_000), max_pixels=ctx.cfg.max_pixels)


# ----------------------------------------------------------------------------------------------------------------
# one image


def store_image(data: bytes, folder: Path, lim: Limits) -> Path:
    """``data`` checked as graft serve checks an upload and saved as FOLDER/<uuid>.<ext>; an :class:`ImageError`
    says why not."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        check_declared_size(tmp, lim.max_pixels, MAX_DECODED_BYTES, draft=SCAN_DRAFT)
        load_rgb(tmp, draft=SCAN_DRAFT)  # sniffs the content and decodes it whole: a broken file stops here
        from PIL import Image

        with Image.open(tmp) as im:
            ext = EXTENSIONS[str(im.format)]
        final = folder / f"{uuid.uuid4().hex}.{ext}"
        os.replace(tmp, final)
        return final
    finally:
        tmp.unlink(missing_ok=True)


def check_bytes(data: bytes, lim: Limits) -> tuple[str, int] | None:
    """Why ``data`` is refused before any decoding (empty, too large), with the status."""
    if not data:
        return "empty file (0 bytes)", 400
    if len(data) > lim.file_bytes:
        return lim.too_large("image"), 413
    return None


# ----------------------------------------------------------------------------------------------------------------
# zip files


def unsafe_names(zf: zipfile.ZipFile) -> list[str]:
    """Member names that would leave a folder if used as paths (absolute, ``..``, a drive)."""
    bad = []
    for name in zf.namelist():
        posix = PurePosixPath(name.replace("\\", "/"))
        if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
            bad.append(name)
    return bad


def zip_members(zf: zipfile.ZipFile, zip_name: str, lim: Limits, out: Outcome) -> Iterator[tuple[str, bytes]]:
    """The (name, bytes) of the zip's files worth checking; folders and macOS metadata are passed over, members
    too large or encrypted are skipped in ``out``. Raises :class:`HTTPError` for a zip refused whole."""
    if bad := unsafe_names(zf):
        raise HTTPError(400, f"{zip_name} holds unsafe paths such as {bad[0]!r} (absolute or with '..'): not imported")
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if len(infos) > MAX_ZIP_MEMBERS:
        raise HTTPError(413, f"{zip_name} holds {len(infos):,} files; at most {MAX_ZIP_MEMBERS:,} per zip: split it")
    if sum(i.file_size for i in infos) > lim.request_bytes:
        raise HTTPError(413, lim.too_large(f"{zip_name} (uncompressed)"))
    for info in infos:
        name = f"{zip_name}/{info.filename}"
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        if info.flag_bits & 0x1:
            out.skip(name, "encrypted zip member: unzip it with its password first", 415)
        elif info.file_size > lim.file_bytes:
            out.skip(name, lim.too_large("image"), 413)
        else:
            try:
                with zf.open(info) as member:
                    data = member.read(lim.file_bytes + 1)  # the declared size bounds it; so does this
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as e:
                out.skip(name, f"broken zip member ({e})", 422)
                continue
            yield name, data


# ----------------------------------------------------------------------------------------------------------------
# the request


def limited(request: Request, limit: int, message: str) -> Request:
    """``request`` whose body, as it is read, is refused (413) beyond ``limit`` bytes."""
    size = 0
    receive = request.receive

    async def counting() -> Any:
        nonlocal size
        msg = await receive()
        if msg["type"] == "http.request":
            size += len(msg.get("body", b""))
            if size > limit:
                raise HTTPError(413, message)
        return msg

    return Request(request.scope, counting)


def process(
    files: list[tuple[str, IO[bytes]]], lim: Limits, folder: Path, add: Callable[[list[Path]], list[int]]
) -> Outcome:
    """Check and copy every image of ``files`` (zips opened), then ``add`` the copies to the store at once."""
    out = Outcome()
    saved: list[Path] = []

    def one(name: str, data: bytes) -> None:
        if refusal := check_bytes(data, lim):
            out.skip(name, refusal[0], refusal[1])
            return
        try:
            saved.append(store_image(data, folder, lim))
        except ImageError as e:
            out.skip(name, e.reason, reason_status(e.reason))

    for name, f in files:
        f.seek(0)
        if zipfile.is_zipfile(f):
            f.seek(0)
            try:
                with zipfile.ZipFile(f) as zf:
                    for member, data in zip_members(zf, name, lim, out):
                        one(member, data)
            except zipfile.BadZipFile as e:
                out.skip(name, f"broken zip file ({e})", 422)
            except HTTPError as e:  # refused whole; the request's other files still count
                out.skip(name, e.message, e.status)
            continue
        f.seek(0)
        one(name, f.read(lim.file_bytes + 1))
    if saved:
        out.added = list(add(saved))
    return out


def add_upload_routes(app: FastAPI, ctx: AppContext) -> None:
    """``POST /api/upload?label=NAME&source=upload|webcam`` with multipart ``files``."""

    @app.post("/api/upload")
    async def upload(
        request: Request,
        label: str | None = Query(None, max_length=100),
        source: Literal["upload", "webcam"] = "upload",
    ) -> JSONResponse:
        lim = limits(ctx)
        if label is not None and label not in {c.name for c in await run_in_threadpool(ctx.store.classes)}:
            raise HTTPError(400, f"no class {label!r} in this project: add it first (POST /api/classes)")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > lim.request_bytes:
            raise HTTPError(413, lim.too_large("upload"))
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise HTTPError(415, "send the images as multipart/form-data, field 'files' (one part per file)")
        try:
            form = await limited(request, lim.request_bytes, lim.too_large("upload")).form(
                max_files=MAX_FILES, max_fields=16
            )
        except MultiPartException as e:
            raise HTTPError(400, f"cannot read the upload: {e.message}") from None
        try:
            parts = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not parts:
                raise HTTPError(400, "the upload holds no file: send the images as the multipart field 'files'")
            files = [(Path(p.filename or "upload").name, p.file) for p in parts]

            def add(paths: list[Path]) -> list[int]:
                return ctx.store.add_images(paths, source=source, label=label)

            out = await run_in_threadpool(process, files, lim, ctx.cfg.project / "images", add)
        finally:
            await form.close()
        if label is not None:
            ctx.note_labels(len(out.added))
        body = {"added": out.added, "skipped": out.skipped}
        if not out.added and out.first_status is not None:
            first = out.skipped[0]
            return JSONResponse(body | {"detail": f"cannot use {first['name']}: {first['reason']}"}, out.first_status)
        return JSONResponse(body)
