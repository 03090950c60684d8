"""The pictures that let a reader of doctor.html confirm a pair at a glance, drawn from the pair's verdict
(:meth:`graft.features.copies.Verdict.evidence`):

- :func:`matches`: the two images side by side, each matched point of the first joined to its match in the
  second by a thin coloured line (the first image shown mirrored when the verdict mirrored it, so the lines run
  across rather than crossing over).
- :func:`aligned`: the first image warped onto the second by the verdict's transform and blended half and half
  with it. The same photograph gives one crisp picture; another shot of the scene gives ghosts and doubled edges
  where the camera or the subject moved.

The verdict's transform and points are in coordinates normalised to each image's width and height, so the
pictures can be drawn at any size. Imports numpy, OpenCV and PIL.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

#: Pixels between the two images of :func:`matches`.
GAP = 12
#: Where the warped first image does not reach, the second is dimmed to this share of itself over near-black.
OUTSIDE, DARK = 0.35, 24.0


def _rgb(im: Image.Image, mirrored: bool = False) -> np.ndarray:
    im = im.convert("RGB")
    return np.array(ImageOps.mirror(im) if mirrored else im)


def pixel_transform(transform: Sequence[float], size_a: tuple[int, int], size_b: tuple[int, int]) -> np.ndarray:
    """The verdict's normalised 2x3 ``transform`` in pixels of images of ``size_a`` and ``size_b`` (width, height)."""
    (wa, ha), (wb, hb) = size_a, size_b
    t = np.asarray(transform, np.float64).reshape(2, 3)
    return np.diag([wb, hb]) @ t @ np.diag([1 / wa, 1 / ha, 1.0])


def warp(
    a: Image.Image, size_b: tuple[int, int], transform: Sequence[float], mirrored: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``a`` (mirrored first when ``mirrored``) warped into a frame of ``size_b``: RGB pixels, and where it lands."""
    src = _rgb(a, mirrored)
    m = pixel_transform(transform, a.size, size_b)
    warped = cv2.warpAffine(src, m, size_b, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    ones = np.full(src.shape[:2], 255, np.uint8)
    inside = cv2.warpAffine(ones, m, size_b, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT) > 0
    return warped, inside


def aligned(a: Image.Image, b: Image.Image, transform: Sequence[float], mirrored: bool) -> Image.Image:
    """``a`` warped onto ``b`` and blended 50/50 with it where it lands; ``b`` dimmed elsewhere."""
    warped, inside = warp(a, b.size, transform, mirrored)
    base = _rgb(b).astype(np.float32)
    out = np.where(inside[..., None], 0.5 * base + 0.5 * warped, OUTSIDE * base + (1 - OUTSIDE) * DARK)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def _colour(k: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((k * 0.61803) % 1.0, 0.9, 0.95)  # golden-ratio hues: neighbours differ
    return round(r * 255), round(g * 255), round(b * 255)


def matches(
    a: Image.Image, b: Image.Image, points: Sequence[Sequence[float]], mirrored: bool, *, background: int = 255
) -> Image.Image:
    """``a`` (mirrored when ``mirrored``) and ``b`` side by side, :data:`GAP` apart and top-aligned, each match
    ``(xa, ya, xb, yb)`` (normalised) a thin line from its point in ``a`` to its point in ``b``."""
    pa, pb = _rgb(a, mirrored), _rgb(b)
    (ha, wa), (hb, wb) = pa.shape[:2], pb.shape[:2]
    canvas = np.full((max(ha, hb), wa + GAP + wb, 3), background, np.uint8)
    canvas[:ha, :wa], canvas[:hb, wa + GAP :] = pa, pb
    for k, (xa, ya, xb, yb) in enumerate(points):
        colour = _colour(k)
        start = (round(xa * wa), round(ya * ha))
        end = (round(wa + GAP + xb * wb), round(yb * hb))
        cv2.line(canvas, start, end, colour, 1, cv2.LINE_AA)
        for centre in (start, end):
            cv2.circle(canvas, centre, 2, colour, 1, cv2.LINE_AA)
    return Image.fromarray(canvas)
