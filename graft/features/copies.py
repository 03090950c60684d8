"""Is it the same photograph? Local features matched under a similarity transform, then the aligned pixels.

Backbone features find images that *look alike*; in a fine-grained set two different photos of one species look
alike too (flowers5: distinct photos up to cosine 0.84, planted copies down to 0.37). So feature similarity only
proposes pairs, and this module decides what each pair is:

1. ORB keypoints of both images (grey, longer side :data:`SIDE`), matched with Lowe's ratio test, in both
   orientations (the first image mirrored or not).
2. A similarity transform (shift, scale, rotation) fitted to the matches by RANSAC: a copy that was cropped,
   resized or turned a little is one. A fit whose scale or angle no copy has (:data:`MAX_SCALE`,
   :data:`MAX_ANGLE`) is not a fit.
3. The first image warped onto the second by that transform, and the two compared in :data:`PATCH`-pixel patches
   where both have texture: the share of patches whose normalised correlation passes :data:`PATCH_AGREES` is the
   ``agreement``. A copy agrees everywhere (re-encoding, brightness and colour casts leave the correlation of
   each patch near 1); another shot of the same scene lines up in places only (the camera or the subject moved);
   two different photos hardly at all.

Kinds (:data:`COPY`, :data:`SAME_SCENE`, :data:`SIMILAR`) follow from the inlier count and the agreement, with
thresholds calibrated on planted copies and on the nearest distinct pairs of three datasets (NOTES.md, "Copies").
The images are decoded again for this (JPEG draft scaling makes that ~2 ms each); only the images of proposed
pairs are. Imports numpy, OpenCV and graft's image reader.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from graft.data.images import load_rgb

#: Longer side, in pixels, that both images of a pair are compared at.
SIDE = 256
#: ORB keypoints per image and orientation (and the FAST threshold: low, so plain backgrounds still give some),
#: over this many pyramid levels (x1.2 each: 5 span 2x, the scale between a photo and a crop keeping 25% of it;
#: both images are at :data:`SIDE` already, so a resized copy differs in scale only by its crop).
FEATURES, FAST_THRESHOLD, LEVELS = 300, 10, 5
#: Lowe's ratio test: a match counts when its best descriptor is this much closer than the second best.
RATIO = 0.8
#: RANSAC's inlier distance (pixels at :data:`SIDE`).
RANSAC_PX = 3.0
#: A copy is at most this much larger or smaller, and turned at most this many degrees.
MAX_SCALE, MAX_ANGLE = 5.0, 20.0
#: Patches are compared in the band of detail between these two blurs (pixels at :data:`SIDE`).
DETAIL_SIGMAS = (1.0, 4.0)
#: ...widened by how much the coarser image was blown up to compare, up to this factor.
MAX_BLOWN = 3.0
#: Patch side (pixels at :data:`SIDE`), the spread of detail below which a patch has nothing to compare, and the
#: correlation from which a patch agrees.
PATCH, TEXTURE_STD, PATCH_AGREES = 16, 2.0, 0.8
#: A copy: this many inliers, this many textured patches compared, and this share of them agreeing...
COPY_INLIERS, COPY_PATCHES, COPY_AGREEMENT = 6, 8, 0.8
#: ...or, on fewer than SURE_INLIERS inliers (a weak fit: a plain or repetitive surface), this share. Planted
#: copies of plain trashnet objects fit on 6-19 inliers and agree at 1.0; two shots of one cardboard surface fit
#: on 11 and agree at 0.92.
SURE_INLIERS, FEW_INLIERS_AGREEMENT = 15, 0.95
#: Another shot of the same scene: this many inliers and this share of the patches agreeing (not a copy).
SCENE_INLIERS, SCENE_AGREEMENT = 15, 0.2
#: Inlier point pairs kept as evidence (for drawing the matches).
KEPT_POINTS = 24

COPY, SAME_SCENE, SIMILAR = "copy", "same_scene", "similar"
_RANK = {SIMILAR: 0, SAME_SCENE: 1, COPY: 2}


@dataclass(frozen=True)
class Verdict:
    """What a pair is (:data:`COPY`, :data:`SAME_SCENE` or :data:`SIMILAR`) and the evidence.

    ``transform``: the 2x3 similarity that maps the first image's points onto the second's, in coordinates
    normalised to each image's width and height (0..1), after mirroring the first image when ``mirrored``.
    ``points``: up to :data:`KEPT_POINTS` inlier matches, ``(xa, ya, xb, yb)`` in the same coordinates."""

    kind: str = SIMILAR
    inliers: int = 0
    agreement: float = 0.0
    patches: int = 0
    mirrored: bool = False
    scale: float = 0.0
    angle: float = 0.0
    transform: tuple[float, ...] | None = None
    points: tuple[tuple[float, float, float, float], ...] = ()

    def evidence(self) -> dict[str, Any]:
        """The verdict as doctor.json evidence (rounded)."""
        return {
            "kind": self.kind,
            "inliers": self.inliers,
            "agreement": round(self.agreement, 3),
            "patches": self.patches,
            "mirrored": self.mirrored,
            "scale": round(self.scale, 3),
            "angle": round(self.angle, 1),
            "transform": None if self.transform is None else [round(v, 4) for v in self.transform],
            "points": [[round(v, 3) for v in p] for p in self.points],
        }


@dataclass
class _Image:
    """One image at :data:`SIDE`: grey pixels, and keypoints per orientation (computed when first asked)."""

    gray: np.ndarray
    upscaled: float = 1.0  # SIDE / the decoded image's longer side (> 1: blown up, no detail at the finest scale)
    keypoints: dict[bool, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)

    def points(self, mirrored: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if mirrored not in self.keypoints:  # two threads may both compute it: the same result, no harm
            g = np.ascontiguousarray(self.gray[:, ::-1]) if mirrored else self.gray
            orb = cv2.ORB_create(
                nfeatures=FEATURES, nlevels=LEVELS, fastThreshold=FAST_THRESHOLD, edgeThreshold=15, patchSize=15
            )
            kp, desc = orb.detectAndCompute(g, None)
            self.keypoints[mirrored] = (np.float32([k.pt for k in kp]).reshape(-1, 2), desc)
        return self.keypoints[mirrored]


def _load(path: Path) -> _Image | None:
    try:
        im = load_rgb(path, draft=SIDE, gray=True)
    except Exception:  # an unreadable file is the scan's finding; here it is simply no copy of anything
        return None
    s = SIDE / max(im.size)
    size = (max(1, round(im.width * s)), max(1, round(im.height * s)))
    return _Image(np.asarray(im.resize(size, resample=2)), s)  # bilinear


def _similarity(m: np.ndarray) -> tuple[float, float]:
    return math.hypot(m[0, 0], m[1, 0]), math.degrees(math.atan2(m[1, 0], m[0, 0]))


def _detail(gray: np.ndarray, scale: float) -> np.ndarray:
    """The band of detail that tells two shots apart: a difference of Gaussians (sigmas :data:`DETAIL_SIGMAS`
    times ``scale``). The fine end drops resampling and JPEG noise; the coarse end drops shading, vignetting and
    plain gradients, which line up under any small shift and would make another shot of a plain background
    agree. ``scale`` > 1 where one image was blown up: the band moves to the detail it still has."""
    g = gray.astype(np.float32)
    fine, coarse = DETAIL_SIGMAS
    return cv2.GaussianBlur(g, (0, 0), fine * scale) - cv2.GaussianBlur(g, (0, 0), coarse * scale)


def _agreement(a: np.ndarray, b: np.ndarray, m: np.ndarray, blown: float) -> tuple[float, int]:
    """(share of agreeing patches, textured patches compared) of ``a`` warped by ``m`` onto ``b``; ``blown``:
    how much the coarser of the two was blown up, in ``b``'s pixels."""
    h, w = b.shape
    band = min(max(1.0, blown), MAX_BLOWN)
    fa, fb = _detail(a, band / max(_similarity(m)[0], 1e-6)), _detail(b, band)
    warped = cv2.warpAffine(fa, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    inside = cv2.warpAffine(np.ones_like(fa), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    rows, cols = h // PATCH, w // PATCH
    if rows == 0 or cols == 0:
        return 0.0, 0

    def blocks(x: np.ndarray) -> np.ndarray:
        return x[: rows * PATCH, : cols * PATCH].reshape(rows, PATCH, cols, PATCH).swapaxes(1, 2).reshape(-1, PATCH**2)

    p, q, full = blocks(warped), blocks(fb), blocks(inside).min(1) > 0
    p, q = p - p.mean(1, keepdims=True), q - q.mean(1, keepdims=True)
    sp, sq = np.sqrt((p * p).mean(1)), np.sqrt((q * q).mean(1))
    textured = full & (sp > TEXTURE_STD) & (sq > TEXTURE_STD)
    if not textured.any():
        return 0.0, 0
    ncc = (p * q).mean(1)[textured] / (sp[textured] * sq[textured])
    return float((ncc > PATCH_AGREES).mean()), int(textured.sum())


def _normalised(m: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, ...]:
    """``m`` (pixels of ``a`` to pixels of ``b``) in coordinates normalised to each image's size."""
    (ha, wa), (hb, wb) = a.shape, b.shape
    n = np.diag([1 / wb, 1 / hb]) @ m @ np.diag([wa, ha, 1.0])
    return tuple(float(v) for v in n.ravel())


def _match(a: _Image, b: _Image, mirrored: bool) -> Verdict:
    pa, da = a.points(mirrored)
    pb, db = b.points(False)
    if da is None or db is None or len(da) < 2 or len(db) < 2:
        return Verdict(mirrored=mirrored)
    knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 4:
        return Verdict(mirrored=mirrored)
    src = pa[[g.queryIdx for g in good]]
    dst = pb[[g.trainIdx for g in good]]
    m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX)
    if m is None:
        return Verdict(mirrored=mirrored)
    inl = inl.ravel().astype(bool)
    scale, angle = _similarity(m)
    inliers = int(inl.sum())
    if not (1 / MAX_SCALE <= scale <= MAX_SCALE and abs(angle) <= MAX_ANGLE) or inliers < COPY_INLIERS:
        return Verdict(inliers=inliers, mirrored=mirrored, scale=scale, angle=angle)
    ga = np.ascontiguousarray(a.gray[:, ::-1]) if mirrored else a.gray
    agreement, patches = _agreement(ga, b.gray, m, max(a.upscaled * scale, b.upscaled))
    needed = COPY_AGREEMENT if inliers >= SURE_INLIERS else FEW_INLIERS_AGREEMENT
    if inliers >= COPY_INLIERS and patches >= COPY_PATCHES and agreement >= needed:
        kind = COPY
    elif inliers >= SCENE_INLIERS and agreement >= SCENE_AGREEMENT:
        kind = SAME_SCENE
    else:
        kind = SIMILAR
    (ha, wa), (hb, wb) = ga.shape, b.gray.shape
    keep = np.nonzero(inl)[0][:KEPT_POINTS]
    points = tuple(
        (float(src[i, 0] / wa), float(src[i, 1] / ha), float(dst[i, 0] / wb), float(dst[i, 1] / hb)) for i in keep
    )
    return Verdict(kind, inliers, agreement, patches, mirrored, scale, angle, _normalised(m, ga, b.gray), points)


def _verdict(a: _Image | None, b: _Image | None, mirrored_first: bool) -> Verdict:
    if a is None or b is None:
        return Verdict()
    best = Verdict()
    for mirrored in (mirrored_first, not mirrored_first):
        v = _match(a, b, mirrored)
        if v.kind == COPY:
            return v
        if (_RANK[v.kind], v.inliers) > (_RANK[best.kind], best.inliers):
            best = v
    return best


def verify(
    paths: Sequence[Path],
    pairs: Iterable[tuple[int, int]],
    *,
    mirrored: Sequence[bool] | None = None,
    workers: int = 2,
    chunk: int = 2048,
) -> list[Verdict]:
    """A :class:`Verdict` per pair ``(i, j)`` of ``paths`` (``j`` is the image the transform maps onto).
    ``mirrored``: per pair, whether to try the mirrored orientation first (the hashes matched mirrored).

    Pairs are taken ``chunk`` at a time, with the images that chunk needs decoded then and dropped after, so
    memory stays bounded however many pairs; time is linear in the number of pairs (and of their images)."""
    pairs = list(pairs)
    hints = [bool(h) for h in mirrored] if mirrored is not None else [False] * len(pairs)
    out: list[Verdict] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(pairs), chunk):
            part = pairs[start : start + chunk]
            needed = sorted({i for p in part for i in p})
            images = dict(zip(needed, pool.map(lambda i: _load(Path(paths[i])), needed), strict=True))
            jobs = [(images[i], images[j], hints[start + k]) for k, (i, j) in enumerate(part)]
            out += pool.map(lambda job: _verdict(*job), jobs)
    return out
