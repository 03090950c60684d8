"""Per-image measures taken where an image is decoded anyway (the scan's validating decode), and the exact hashes.

:func:`measure` turns one decoded image into a small dict of numbers that the scan keeps with its verdict
(``graft.data.ScanVerdicts``), so a later scan of unchanged files, and ``graft doctor`` on a warm cache, never
decode again. Everything here is cheap (about a millisecond per image at the scan's 256-pixel draft size) and
imports only PIL, numpy and the standard library: the data layer calls it.

- ``pixels``: sha1 of the decoded RGB pixels and their size. The scan decodes JPEGs at a DCT draft scale; two
  files with the same full-size pixels have the same coefficients and therefore the same draft pixels, so equal
  digests mean identical decoded images (``draft`` records the scale so digests of different drafts are never
  compared).
- ``phash``/``phash_flip``: a 64-bit DCT perceptual hash of the image and of its mirror image. Mirroring reverses
  each row, which multiplies the DCT coefficient of horizontal frequency ``v`` by ``(-1)**v``: both hashes come
  from one transform.
- quality numbers on a grey thumbnail: mean and spread of luminance, variance of the Laplacian (sharpness, at a
  fixed scale so images of any size compare), mean channel spread (0 for a grey image), original width/height.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Bumped when a measure changes meaning: stored measures of another version are taken again.
VERSION = 1
#: Side of the thumbnail the quality numbers are taken on (the shorter side, aspect kept).
THUMB = 128
_HASH_SIDE = 32
_HASH_BITS = 8  # the 8 x 8 lowest frequencies: a 64-bit hash


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m.astype(np.float64)


_DCT = _dct_matrix(_HASH_SIDE)
_FLIP_SIGN = np.array([(-1) ** v for v in range(_HASH_BITS)], dtype=np.float64)[None, :]


def _bits(coef: np.ndarray) -> int:
    """64 bits: each low-frequency coefficient above the median of the 63 non-DC ones."""
    flat = coef.reshape(-1)
    return int.from_bytes(np.packbits(flat > np.median(flat[1:])).tobytes(), "big")  # first coefficient: top bit


def perceptual_hashes(gray: Image.Image) -> tuple[int, int]:
    """(hash of ``gray``, hash of its mirror image): 64-bit DCT hashes as ints."""
    small = np.asarray(gray.resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.BOX), dtype=np.float64)
    coef = (_DCT @ small @ _DCT.T)[:_HASH_BITS, :_HASH_BITS]
    return _bits(coef), _bits(coef * _FLIP_SIGN)


def _laplacian_variance(g: np.ndarray) -> float:
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var()) if lap.size else 0.0


def measure(path: Path, image: Image.Image, draft: int | None) -> dict[str, Any]:
    """The doctor's measures of one decoded image (see the module doc). ``image`` is 8-bit RGB as
    :func:`graft.data.load_rgb` returns it (at JPEG ``draft`` scale)."""
    try:
        with Image.open(path) as header:  # the size before any draft scaling: header only, no decode
            width, height = header.size
    except Exception:
        width, height = image.size
    if (width > height) != (image.width > image.height):  # EXIF rotation was applied to the decoded image
        width, height = height, width
    digest = hashlib.sha1(f"{image.width}x{image.height}".encode())
    digest.update(image.tobytes())
    gray_img = image.convert("L")  # one channel first: the resize below costs a third
    scale = THUMB / max(1, min(image.size))
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        gray_img = gray_img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    gray = np.asarray(gray_img, dtype=np.float32) / 255.0
    # colour: the spread of R, G, B per pixel, on a 32-pixel box-filtered copy (colour is a low-frequency thing)
    rgb = np.asarray(image.reduce(max(1, min(image.size) // _HASH_SIDE)))
    r, g, b = (rgb[..., c].astype(np.int16) for c in range(3))  # per channel: reductions over axis 2 are slow
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    phash, phash_flip = perceptual_hashes(gray_img)
    return {
        "v": VERSION,
        "draft": draft,
        "pixels": digest.hexdigest(),
        "phash": f"{phash:016x}",
        "phash_flip": f"{phash_flip:016x}",
        "width": int(width),
        "height": int(height),
        "luma": round(float(gray.mean()), 4),
        "contrast": round(float(gray.std()), 4),
        "sharpness": round(_laplacian_variance(gray) * 1e4, 3),
        "chroma": round(float(spread.mean()) / 255.0, 4),
    }


def usable(m: Any, draft: int | None) -> bool:
    """Whether stored measures ``m`` are of this version and draft scale."""
    return isinstance(m, dict) and m.get("v") == VERSION and m.get("draft") == draft


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of uint64 arrays (broadcast)."""
    x = np.bitwise_xor(a, b)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)
