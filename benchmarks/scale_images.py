"""The images of ``bench_scale``: many distinct JPEGs made from the shared datasets, written once to a cache folder.

Image ``i`` of the fixed order is a random crop (a third of the area up to all of it, aspect 3:4 to 4:3), maybe
mirrored, with its brightness, contrast and saturation changed (0.7-1.3 each), of source photo ``i mod S`` (the
``S`` photos of hymenoptera_data, trashnet_half and flowers5 in a seeded order), resized to 256 pixels on its
shorter side; its random numbers come from ``(seed, i)`` alone, so the images do not depend on how they were made.
It lands in ``images/<split>/<dataset>_<class>/<i>.jpg``, the split being its source photo's (variants of one val
photo stay in val). A size ``N`` is the first ``N`` of the order, as an ImageFolder tree of hard links
``sizes/<N>/<split>/<class>/``.

Generation decodes each source photo once and writes its variants, one photo per worker at a time: memory does
not grow with the number of images. Files are written under a temporary name and renamed, so an interrupted run
resumes where it stopped; ``complete-<N>`` marks a finished cache of ``N`` images.

    python -m benchmarks.scale_images --images 100000 [--cache DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SOURCES = ("hymenoptera_data", "trashnet_half", "flowers5")
CACHE = Path.home() / ".cache" / "graft" / "bench_scale"
SIDE = 256
SUFFIXES = {".jpg", ".jpeg", ".png"}


def sources(data: Path = DATA, seed: int = 0) -> list[tuple[Path, str, str]]:
    """(photo, split, class folder name) of every source photo, in the seeded order."""
    found = []
    for name in SOURCES:
        for split in ("train", "val"):
            for f in sorted((data / name / split).rglob("*")):
                if f.suffix.lower() in SUFFIXES:
                    found.append((f, split, f"{name.split('_')[0]}_{f.parent.name}"))
    order = np.random.default_rng(seed).permutation(len(found))
    return [found[i] for i in order]


def variant(photo: Image.Image, seed: int, i: int) -> Image.Image:
    """Image ``i``: a seeded crop, flip and colour change of ``photo``, ``SIDE`` pixels on its shorter side."""
    rng = np.random.default_rng([seed, i])
    w, h = photo.size
    area = w * h * rng.uniform(1 / 3, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, round(np.sqrt(area * aspect))), min(h, round(np.sqrt(area / aspect)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = photo.crop((x, y, x + cw, y + ch))
    scale = SIDE / min(cw, ch)
    img = img.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(rng.uniform(0.7, 1.3))
    return img


def path_of(cache: Path, i: int, split: str, cls: str) -> Path:
    return cache / "images" / split / cls / f"{i:06d}.jpg"


def _write_source(args: tuple[Path, Path, str, str, int, int, int, int]) -> int:
    """Every variant of one source photo that is not on disk yet; how many were written."""
    cache, photo_path, split, cls, s, n_sources, total, seed = args
    todo = [i for i in range(s, total, n_sources) if not path_of(cache, i, split, cls).exists()]
    if not todo:
        return 0
    with Image.open(photo_path) as im:
        photo = im.convert("RGB")
    for i in todo:
        target = path_of(cache, i, split, cls)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        variant(photo, seed, i).save(tmp, "JPEG", quality=90)
        os.replace(tmp, target)
    return len(todo)


def generate(total: int, cache: Path = CACHE, *, workers: int = 1, seed: int = 0, data: Path = DATA) -> float:
    """Write the first ``total`` images to ``cache`` unless it is complete already; seconds it took."""
    marker = cache / f"complete-{total}"
    if marker.exists() or any(int(p.name.split("-")[1]) >= total for p in cache.glob("complete-*")):
        return 0.0
    t0 = time.perf_counter()
    src = sources(data, seed)
    jobs = [(cache, f, split, cls, s, len(src), total, seed) for s, (f, split, cls) in enumerate(src)]
    written = 0
    with ProcessPoolExecutor(workers) as pool:
        for n in pool.map(_write_source, jobs, chunksize=4):
            written += n
    cache.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{total}\n")
    return time.perf_counter() - t0


def subset(n: int, cache: Path = CACHE, *, seed: int = 0, data: Path = DATA) -> Path:
    """The ImageFolder tree of the first ``n`` images (hard links into the cache), made once."""
    root = cache / "sizes" / str(n)
    done = root / "complete"
    if done.exists():
        return root
    src = sources(data, seed)
    for i in range(n):
        _, split, cls = src[i % len(src)]
        target = root / split / cls / f"{i:06d}.jpg"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path_of(cache, i, split, cls), target)
    done.write_text(f"{n}\n")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    seconds = generate(args.images, args.cache, workers=args.workers)
    print(f"{args.images} images in {args.cache} ({seconds:.0f} s to generate)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
