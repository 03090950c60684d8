"""Planted dataset problems for graft doctor's tests and benchmark: copies made by one random edit, flipped labels.

    from planted import TRANSFORMS, edited_copy, plant_leakage, flip_labels  # tests/ is on sys.path

Everything is written into folders the caller owns (temporary ones); nothing here is committed data.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps


def _crop(im: Image.Image, rng: random.Random) -> Image.Image:
    area = rng.uniform(0.6, 0.9)  # the spec: re-cropped keeping >= 60% of the area
    ratio = rng.uniform(0.8, 1.25)
    w = min(im.width, round(im.width * (area * ratio) ** 0.5))
    h = min(im.height, round(area * im.width * im.height / w))  # clipped: a little more area, never less
    x, y = rng.randint(0, im.width - w), rng.randint(0, im.height - h)
    return im.crop((x, y, x + w, y + h))


def _resize(im: Image.Image, rng: random.Random) -> Image.Image:
    s = rng.uniform(0.4, 0.8)
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BILINEAR)


def _jpeg(im: Image.Image, rng: random.Random) -> Image.Image:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=rng.randint(30, 60))  # the spec: JPEG quality >= 30
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _brightness(im: Image.Image, rng: random.Random) -> Image.Image:
    return ImageEnhance.Brightness(im).enhance(rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.15, 1.3)]))


def _mirror(im: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.mirror(im)


TRANSFORMS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "mirror": _mirror,
    "crop": _crop,
    "resize": _resize,
    "jpeg": _jpeg,
    "brightness": _brightness,
}


def edited_copy(src: Path, dst: Path, kind: str, rng: random.Random) -> None:
    """``dst``: ``src`` edited by ``TRANSFORMS[kind]`` and saved as a JPEG (quality 90 unless ``kind`` is jpeg)."""
    with Image.open(src) as im:
        out = TRANSFORMS[kind](ImageOps.exif_transpose(im).convert("RGB"), rng)
    dst.parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, "JPEG", quality=95 if kind == "jpeg" else 90)


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
        kind = list(TRANSFORMS)[i % len(TRANSFORMS)]
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
