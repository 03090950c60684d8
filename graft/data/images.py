"""Dataset folders: find the classes, validate every image by decoding it, split, and report.

Two layouts are accepted: ``ROOT/train/<class>/*`` + ``ROOT/val/<class>/*`` ("train/val"; the val folder
may also be called ``valid`` or ``validation``), or ``ROOT/<class>/*`` ("split"), which is split per class
with a seeded RNG. Files are recognised by their content, never by their extension, and every candidate is
fully decoded once during the scan, so a training run never meets a broken file. Files that cannot be used
are skipped and listed with a reason in the :class:`DataReport`.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from graft.core.errors import ImageError

#: PIL format names accepted: raster formats that cameras, phones and the web produce and that Pillow decodes
#: on its own (MPO is the multi-picture JPEG of many cameras; PPM covers PBM/PGM/PPM). Left out on purpose:
#: icon containers (ICO, ICNS, CUR), vector/page formats that need external programs (EPS, PDF, WMF), layered
#: PSD, scientific containers (FITS, HDF5, ...), and TGA (no signature: random bytes can pass as one).
IMAGE_FORMATS: frozenset[str] = frozenset(
    {"JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "AVIF", "JPEG2000"}
)

#: Images declaring more pixels than this are refused unopened (Pillow's own error threshold).
MAX_PIXELS: int = 89_478_485 * 2

#: Longest side / shortest side kept by :func:`load_rgb`: a longer image is cropped to its centre. Every later step
#: resizes the shorter side to ~256 pixels, so a 20000x1 PNG of a few hundred bytes would become gigabytes (a cheap
#: way to exhaust a server's memory); the crop is invisible to the centre crop the model sees.
MAX_ASPECT: int = 16

#: Placeholder graphics that are valid images but not photos of anything: sha256 -> description.
KNOWN_PLACEHOLDERS: dict[str, str] = {
    "6b4966252973c581b521f804453c6a0649ea6a2ce7e3e5c7deeb7d80623de231": (
        '"this image could not be found" graphic served by a photo host for deleted photos'
    ),
}

#: Longest side the scan decodes to (a JPEG draft): enough to find a broken file, much cheaper than full size.
SCAN_DRAFT = 256
_PLACEHOLDER_MAX_BYTES = 64 * 1024  # placeholders are small; hashing only small files keeps scans cheap


def _not_an_image_reason(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        head = b"\0"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "not an image: the file is an HTML page (a failed download?)"
    try:
        if b"\0" not in head:
            head.decode("utf-8")
            return "not an image: the file contains text"
    except UnicodeDecodeError:
        pass
    return "not an image: content is not a recognised image format"


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha is composited over white."""
    mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        import numpy as np

        a = np.asarray(im).astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi > 255 and hi <= 65535):
            a = a / 257.0  # full 16-bit range -> 8-bit, so a mid-gray stays mid-gray
        elif mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif (lo < 0 or hi > 255) and hi > lo:
            a = (a - lo) * (255.0 / (hi - lo))  # unknown range: stretch rather than clip (a constant one is clipped)
        gray = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
        return gray.convert("RGB")
    return im.convert("RGB")  # also a copy when already RGB, detached from the file


def load_rgb(path: str | os.PathLike[str], *, draft: int | None = None, gray: bool = False) -> Image.Image:
    """Open an image by its content and return it fully decoded as 8-bit RGB (or 8-bit grey, ``gray``).

    EXIF orientation is applied; animations give their first frame; an image more than :data:`MAX_ASPECT` times
    longer than wide (or the reverse) is cropped to its centre; grayscale, 16-bit, float, palette, CMYK,
    YCbCr and LAB images are converted (16-bit and float data are scaled to 0..255, not clipped); transparent
    pixels are composited over white.

    Args:
        path: the image file.
        draft: for JPEG, let the decoder downsample by DCT scaling to no less than ``draft`` x ``draft``
            pixels (much faster when only a small image is needed).
        gray: return 8-bit grey ("L"); a JPEG is then decoded to grey directly (no colour conversion).

    Raises:
        ImageError: the file is missing, unreadable, empty, not an image, in an unsupported format,
            truncated or corrupt, too large (decompression bomb), or a known placeholder graphic.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise ImageError(p, f"broken symbolic link (target {os.readlink(p)} does not exist)") from None
        raise ImageError(p, "file not found") from None
    except OSError as e:
        raise ImageError(p, f"cannot read file: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):  # opening a FIFO or device would block or never end
        raise ImageError(p, "not a regular file")
    if st.st_size == 0:
        raise ImageError(p, "empty file (0 bytes)")
    try:
        if st.st_size < _PLACEHOLDER_MAX_BYTES:
            what = KNOWN_PLACEHOLDERS.get(hashlib.sha256(p.read_bytes()).hexdigest())
            if what is not None:
                raise ImageError(p, f"placeholder image, not a photo: {what}")
        with Image.open(p) as im:
            if im.format not in IMAGE_FORMATS:
                raise ImageError(p, f"unsupported image format {im.format} (convert it to PNG or JPEG)")
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(p, _bomb_reason(f"{w}x{h} = {w * h:,}"))
            if draft and im.format in ("JPEG", "MPO"):
                im.draft("L" if gray else "RGB", (draft, draft))
            im.load()
            try:
                frame = ImageOps.exif_transpose(im)
            except Exception:  # a malformed EXIF block should not reject an otherwise good photo
                frame = im.copy()
            frame = _limit_aspect(frame)
            if gray:
                return (
                    frame.copy()
                    if frame.mode == "L" and "transparency" not in frame.info
                    else _to_rgb(frame).convert("L")
                )
            return _to_rgb(frame)
    except ImageError:
        raise
    except PermissionError as e:
        raise ImageError(p, f"cannot read file: {e.strerror}") from None
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(p, _bomb_reason(f"{int(m.group(1)):,}" if m else "too many")) from None
    except UnidentifiedImageError:
        raise ImageError(p, _not_an_image_reason(p)) from None
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...) for bad data
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            raise ImageError(p, "truncated image data: the file ends early (incomplete download or copy?)") from None
        raise ImageError(p, f"corrupt image data ({msg})") from None


def decoded_bytes(im: Image.Image) -> int:
    """Memory, in bytes, that :func:`load_rgb` takes to decode an opened (not yet loaded) image and convert it to
    RGB: its pixels in their own format, the RGB result, and what the conversion of :func:`_to_rgb` adds (a float64
    copy for 16-bit, 32-bit and float images, three RGBA layers for transparency). Read from the header only, so a
    caller can refuse an image before decoding it (a float TIFF costs ~5 times an RGB one of the same size)."""
    from PIL import ImageMode

    mode = ImageMode.getmode(im.mode)
    per_pixel = len(mode.bands) * int(mode.typestr[-1]) + 3
    if im.mode.startswith("I") or im.mode == "F":
        per_pixel += 8 + 1  # float64 copy, then uint8
    elif "A" in mode.bands or "a" in mode.bands or "transparency" in im.info:
        per_pixel += 3 * 4
    w, h = im.size
    return w * h * per_pixel


def _limit_aspect(im: Image.Image) -> Image.Image:
    """``im`` cropped to its centre when one side is more than :data:`MAX_ASPECT` times the other."""
    w, h = im.size
    if w > MAX_ASPECT * h:
        left = (w - MAX_ASPECT * h) // 2
        return im.crop((left, 0, left + MAX_ASPECT * h, h))
    if h > MAX_ASPECT * w:
        top = (h - MAX_ASPECT * w) // 2
        return im.crop((0, top, w, top + MAX_ASPECT * w))
    return im


def _bomb_reason(size: str) -> str:
    return f"image too large: declares {size} pixels, limit {MAX_PIXELS:,} (possible decompression bomb)"


def check_image(path: str | os.PathLike[str]) -> str | None:
    """Why the image at ``path`` cannot be used, or None when it can. Never raises for a bad file."""
    try:
        load_rgb(path, draft=SCAN_DRAFT)
    except ImageError as e:
        return e.reason
    return None


class DecodedImages:
    """Images decoded by the scan, kept (up to ``budget`` bytes) for their first use in the same run.

    Validating a file means decoding it; keeping the result lets the feature pass or the in-memory image store
    skip a second decode. Each image is handed out once (``take`` removes it), so memory is released as the
    images are used. Thread-safe: the scan fills it from a thread pool.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._images: dict[tuple[Path, int | None], Image.Image] = {}
        self._lock = threading.Lock()

    def offer(self, path: Path, draft: int | None, image: Image.Image) -> None:
        size = image.width * image.height * 3
        with self._lock:
            if self.used + size <= self.budget:
                self._images[(path, draft)] = image
                self.used += size

    def take(self, path: Path, draft: int | None) -> Image.Image | None:
        with self._lock:
            image = self._images.pop((path, draft), None)
            if image is not None:
                self.used -= image.width * image.height * 3
            return image

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._images)
