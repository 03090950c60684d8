"""Planted dataset problems for graft doctor's tests and benchmark: copies made by one random edit, flipped labels.

    from planted import TRANSFORMS, edited_copy, plant_leakage, flip_labels  # tests/ is on sys.path

Everything is written into folders the caller owns (temporary ones); nothing here is committed data.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps


def _crop(im: Image.Image, rng: random.Random) -> Image.Image:
    """Keeps 40-90% of the area, centred half the time, anywhere in the frame otherwise."""
    area = rng.uniform(0.4, 0.9)
    ratio = rng.uniform(0.8, 1.25)
    w = min(im.width, round(im.width * (area * ratio) ** 0.5))
    h = min(im.height, round(area * im.width * im.height / w))  # clipped: a little more area, never less
    if rng.random() < 0.5:
        x, y = (im.width - w) // 2, (im.height - h) // 2
    else:
        x, y = rng.randint(0, im.width - w), rng.randint(0, im.height - h)
    return im.crop((x, y, x + w, y + h))


def _resize(im: Image.Image, rng: random.Random) -> Image.Image:
    s = rng.choice([rng.uniform(0.3, 0.8), rng.uniform(1.25, 2.0)])
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BILINEAR)


def _jpeg(im: Image.Image, rng: random.Random) -> Image.Image:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=rng.randint(20, 60))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _colour(im: Image.Image, rng: random.Random) -> Image.Image:
    """Brightness x0.7-0.85 or x1.15-1.3, or each channel scaled by 0.85-1.15 (a colour cast)."""
    if rng.random() < 0.5:
        return ImageEnhance.Brightness(im).enhance(rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.15, 1.3)]))
    gains = [rng.uniform(0.85, 1.15) for _ in range(3)]
    bands = [b.point(lambda v, g=g: min(255, round(v * g))) for b, g in zip(im.split(), gains, strict=True)]
    return Image.merge("RGB", bands)


def _rotate(im: Image.Image, rng: random.Random) -> Image.Image:
    """Turned by 2-10 degrees either way; half the time cropped to the largest upright rectangle inside."""
    angle = rng.choice([-1, 1]) * rng.uniform(2, 10)
    out = im.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)
    if rng.random() < 0.5:
        return out
    a = math.radians(abs(angle))
    w, h = im.size
    # the upright rectangle of the image's aspect that fits inside the turned frame
    k = 1 / (math.cos(a) + math.sin(a) * max(w / h, h / w))
    cw, ch = round(w * k), round(h * k)
    return out.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def _mirror(im: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.mirror(im)


#: One edit each, as a copy of a photo found elsewhere would have been edited.
SINGLE: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "mirror": _mirror,
    "crop": _crop,
    "resize": _resize,
    "jpeg": _jpeg,
    "colour": _colour,
    "rotate": _rotate,
}
#: Every edit alone and every two of them in turn ("crop+jpeg": cropped, then re-encoded).
TRANSFORMS: list[str] = [*SINGLE, *(f"{a}+{b}" for a, b in itertools.combinations(SINGLE, 2))]


def pick_transform(rng: random.Random) -> str:
    """A single edit half the time, two edits otherwise (each uniformly among its kind)."""
    return rng.choice(TRANSFORMS[: len(SINGLE)] if rng.random() < 0.5 else TRANSFORMS[len(SINGLE) :])


def edit(im: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    for name in kind.split("+"):
        im = SINGLE[name](im, rng)
    return im


def edited_copy(src: Path, dst: Path, kind: str, rng: random.Random) -> None:
    """``dst``: ``src`` edited by ``kind`` (one of :data:`TRANSFORMS`) and saved as a JPEG (quality 90, or 95
    after a JPEG edit, which set the quality that counts)."""
    with Image.open(src) as im:
        out = edit(ImageOps.exif_transpose(im).convert("RGB"), kind, rng)
    dst.parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, "JPEG", quality=95 if "jpeg" in kind.split("+") else 90)


def copy_tree(src: Path, dst: Path) -> None:
    """``src`` into ``dst`` file by file (hard links where possible: they are distinct paths to graft)."""
    for f in sorted(src.rglob("*")):
        if f.is_file():
            t = dst / f.relative_to(src)
            t.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, t)
            except OSError:
                shutil.copyfile(f, t)


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def plant_leakage(data: Path, dst: Path, fraction: float, seed: int = 0) -> list[tuple[str, str, str]]:
    """A copy of the train/val dataset ``data`` in ``dst`` where ``fraction`` of the val images also appear in
    train (same class), each edited by one random transform. Returns (val file, planted train file, transform),
    relative to ``dst``."""
    copy_tree(data, dst)
    rng = random.Random(seed)
    val = images(dst / "val")
    chosen = rng.sample(val, round(fraction * len(val)))
    planted = []
    for i, v in enumerate(chosen):
        kind = pick_transform(rng)
        target = dst / "train" / v.parent.name / f"planted_{i:03d}_{v.stem}.jpg"
        edited_copy(v, target, kind, rng)
        planted.append((v.relative_to(dst).as_posix(), target.relative_to(dst).as_posix(), kind))
    return planted


def flip_labels(data: Path, dst: Path, fraction: float, seed: int = 0) -> list[tuple[str, str]]:
    """A copy of ``data`` in ``dst`` where ``fraction`` of the train images are moved to another (random) class
    folder. Returns (new relative path, original class)."""
    copy_tree(data, dst)
    rng = random.Random(seed)
    classes = sorted(d.name for d in (dst / "train").iterdir() if d.is_dir())
    train = images(dst / "train")
    flipped = []
    for f in rng.sample(train, round(fraction * len(train))):
        new = rng.choice([c for c in classes if c != f.parent.name])
        target = dst / "train" / new / f"flipped_{f.name}"
        f.rename(target)
        flipped.append((target.relative_to(dst).as_posix(), f.parent.name))
    return flipped
