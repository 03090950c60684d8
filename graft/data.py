"""Dataset folders: find the classes, validate every image by decoding it, split, and report.

Two layouts are accepted: ``ROOT/train/<class>/*`` + ``ROOT/val/<class>/*`` ("train/val"; the val folder
may also be called ``valid`` or ``validation``), or ``ROOT/<class>/*`` ("split"), which is split per class
with a seeded RNG. Files are recognised by their content, never by their extension, and every candidate is
fully decoded once during the scan, so a training run never meets a broken file. Files that cannot be used
are skipped and listed with a reason in the :class:`DataReport`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from graft.errors import DataError, ImageError

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

_PLACEHOLDER_MAX_BYTES = 64 * 1024  # placeholders are small; hashing only small files keeps scans cheap
_VAL_DIR_NAMES = ("val", "valid", "validation")
_SCAN_DRAFT = 256


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
        elif lo < 0 or hi > 255:
            a = (a - lo) * (255.0 / (hi - lo))  # unknown range: stretch rather than clip
        gray = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
        return gray.convert("RGB")
    return im.convert("RGB")  # also a copy when already RGB, detached from the file


def load_rgb(path: str | os.PathLike[str], *, draft: int | None = None) -> Image.Image:
    """Open an image by its content and return it fully decoded as 8-bit RGB.

    EXIF orientation is applied; animations give their first frame; an image more than :data:`MAX_ASPECT` times
    longer than wide (or the reverse) is cropped to its centre; grayscale, 16-bit, float, palette, CMYK,
    YCbCr and LAB images are converted (16-bit and float data are scaled to 0..255, not clipped); transparent
    pixels are composited over white.

    Args:
        path: the image file.
        draft: for JPEG, let the decoder downsample by DCT scaling to no less than ``draft`` x ``draft``
            pixels (much faster when only a small image is needed).

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
                im.draft("RGB", (draft, draft))
            im.load()
            try:
                frame = ImageOps.exif_transpose(im)
            except Exception:  # a malformed EXIF block should not reject an otherwise good photo
                frame = im.copy()
            return _to_rgb(_limit_aspect(frame))
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
        load_rgb(path, draft=_SCAN_DRAFT)
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


@dataclass(frozen=True)
class Sample:
    """One usable image and its class index."""

    path: Path
    label: int


@dataclass(frozen=True)
class Skipped:
    """A file that is not used; ``path`` is relative to the data root, posix style."""

    path: str
    reason: str


@dataclass
class DataReport:
    """What a scan found: classes, per-split counts, and every skipped file with its reason."""

    root: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    skipped: list[Skipped] = field(default_factory=list)
    val_split: float | None = None
    seed: int | None = None

    @property
    def n_train(self) -> int:
        return sum(self.counts["train"].values())

    @property
    def n_val(self) -> int:
        return sum(self.counts["val"].values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with ``n_train`` and ``n_val`` totals."""
        return {**asdict(self), "n_train": self.n_train, "n_val": self.n_val}

    def format(self) -> str:
        """Human-readable report, as printed by ``graft check``."""
        if self.layout == "split":
            how = f"split (one folder per class; {self.val_split:.0%} of each class held out, seed {self.seed})"
        else:
            how = "train/val (separate train and validation folders)"
        lines = [f"data:    {self.root}", f"layout:  {how}", f"classes: {len(self.classes)}", ""]
        width = max([len(c) for c in self.classes] + [5])
        lines.append(f"  {'class':<{width}}  {'train':>6}  {'val':>6}")
        for c in self.classes:
            lines.append(f"  {c:<{width}}  {self.counts['train'][c]:>6}  {self.counts['val'][c]:>6}")
        lines.append(f"  {'total':<{width}}  {self.n_train:>6}  {self.n_val:>6}")
        train = self.counts["train"]
        if train:
            big, small = max(train, key=train.__getitem__), min(train, key=train.__getitem__)
            if train[big] > 3 * train[small]:
                lines += [
                    "",
                    f"warning: classes are imbalanced: {big!r} has {train[big]} training images, "
                    f"{train[big] / max(train[small], 1):.1f}x the {train[small]} of {small!r}; "
                    "overall accuracy can hide a poor smaller class, so look at per-class results.",
                ]
        lines.append("")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file{'s' if len(self.skipped) != 1 else ''}:")
            lines += [f"  {s.path}: {s.reason}" for s in self.skipped]
        else:
            lines.append("skipped: none")
        return "\n".join(lines)


@dataclass
class Dataset:
    """A scanned dataset: classes, train and val samples (absolute paths), and the scan report."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    report: DataReport
    decoded: DecodedImages = field(default_factory=lambda: DecodedImages(0))

    def split_dict(self) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...]}``: paths relative to the data root, posix (saved in runs)."""
        root = Path(self.report.root)
        return {
            k: [s.path.relative_to(root).as_posix() for s in v] for k, v in (("train", self.train), ("val", self.val))
        }


class ScanVerdicts:
    """What the scan found for each file of a dataset (usable, or the reason it is skipped), remembered by path,
    size and mtime in the cache folder (``$GRAFT_CACHE_DIR/scan``): a later scan of unchanged files skips their
    validating decode, which is most of a warm run's scan (0.7 s of 400 JPEGs on 2 cores). The feature store
    trusts the same file identity. An unreadable or foreign cache file is ignored and rewritten.
    """

    VERSION = 1

    def __init__(self, base: Path) -> None:
        from graft.features import cache_root

        key = hashlib.sha256(str(base).encode("utf-8", "surrogateescape")).hexdigest()[:24]
        self.path = cache_root() / "scan" / f"{key}.json"
        self.base = _json_safe(str(base))
        self.known: dict[str, list[Any]] = {}
        self.changed = False
        try:
            with open(self.path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("version") == self.VERSION and saved.get("base") == self.base:
                self.known = saved["files"]
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            pass  # no cache yet, or one that cannot be read: everything is decoded

    def get(self, path: Path) -> tuple[bool, str | None]:
        """(known, skip reason or None) for ``path`` as it is now on disk."""
        entry = self.known.get(_json_safe(str(path)))
        try:
            st = path.stat()
        except OSError:
            return False, None
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return True, entry[2]
        return False, None

    def put(self, path: Path, reason: str | None) -> None:
        try:
            st = path.stat()
        except OSError:
            return  # gone or unreadable: decide again next time
        self.known[_json_safe(str(path))] = [st.st_size, st.st_mtime_ns, reason]
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        from graft.checkpoint import atomic_write_json

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, {"version": self.VERSION, "base": self.base, "files": self.known})
        except OSError:
            pass  # a read-only cache folder only costs the next scan its decodes


def _json_safe(text: str) -> str:
    """File names that are not UTF-8 (lone surrogates in Python) as JSON-safe text."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _walk(folder: Path, base: Path, skipped: list[Skipped], seen: set[tuple[int, int]]) -> list[Path]:
    """Every non-directory entry under ``folder``, recursively, following symlinks but not loops."""
    try:
        st = folder.stat()
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as e:
        skipped.append(Skipped(folder.relative_to(base).as_posix() + "/", f"cannot read folder: {e.strerror}"))
        return []
    if (st.st_dev, st.st_ino) in seen:
        return []
    seen.add((st.st_dev, st.st_ino))
    out: list[Path] = []
    for p in entries:
        if p.is_dir():
            if not p.name.startswith("."):
                out += _walk(p, base, skipped, seen)
        else:
            out.append(p)
    return out


def _skip_summary(skipped: list[Skipped]) -> str:
    shown = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
    return shown + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")


def scan(
    root: str | os.PathLike[str],
    *,
    val_split: float = 0.2,
    seed: int = 0,
    workers: int | None = None,
    draft: int = _SCAN_DRAFT,
    keep_decoded: int = 0,
) -> Dataset:
    """Find the classes and images under ``root``, validate every image, and build the train/val split.

    Args:
        root: a folder with ``train/`` and ``val/`` (or ``valid/``, ``validation/``) sub-folders holding one
            folder per class, or with one folder per class directly (then split here).
        val_split: fraction of each class held out for validation (split layout only), in (0, 1).
        seed: seed of the split (split layout only); the same seed gives the same split.
        workers: threads decoding images; default ``min(4, os.cpu_count())``.
        draft: JPEG draft size of the validating decode (use the size the images will be needed at).
        keep_decoded: bytes of decoded images to keep in ``Dataset.decoded`` for the first use after the scan
            (so a run decodes each image once); 0 keeps none.

    Raises:
        DataError: the folder cannot be used; the message says what is wrong and what to do.
    """
    base = Path(os.path.abspath(os.path.expanduser(root)))
    layout_help = (
        "A dataset is a folder with one sub-folder per class (e.g. data/cats/*.jpg, data/dogs/*.jpg), "
        "or with train/ and val/ folders that each hold the same class sub-folders."
    )
    if not base.exists():
        raise DataError(f"Data folder {base} does not exist. Check the path. {layout_help}")
    if not base.is_dir():
        raise DataError(f"Data path {base} is not a folder. {layout_help}")

    top = {d.name.lower(): d for d in _subdirs(base)}
    train_dir, vals = top.get("train"), [top[n] for n in _VAL_DIR_NAMES if n in top]
    if train_dir and len(vals) > 1:
        names = ", ".join(v.name + "/" for v in vals)
        raise DataError(f"{base} has several validation folders ({names}). Keep only one of them.")
    if train_dir and vals:
        layout, splits = "train/val", {"train": train_dir, "val": vals[0]}
        used_split, used_seed = None, None
    else:
        # a lone train/ or val/ holding class folders is half a train/val layout; holding images, a class
        half = train_dir or (vals[0] if vals else None)
        if half and _subdirs(half):
            missing = "val/" if train_dir else "train/"
            raise DataError(
                f"{base} has a {half.name}/ folder but no {missing} folder. Add {missing} with the same "
                f"class sub-folders, or put the class folders directly in {base} to have graft split them."
            )
        if not 0 < val_split < 1:
            raise DataError(f"val_split must be between 0 and 1 (exclusive), got {val_split}.")
        layout, splits = "split", {"all": base}
        used_split, used_seed = val_split, seed

    skipped: list[Skipped] = []
    class_dirs: dict[str, dict[str, Path]] = {}  # split -> class -> folder
    for split, folder in splits.items():
        for p in sorted(folder.iterdir(), key=lambda p: p.name):
            if not p.is_dir():
                skipped.append(Skipped(p.relative_to(base).as_posix(), _loose_reason(p)))
        class_dirs[split] = {d.name: d for d in _subdirs(folder)}
        if not class_dirs[split]:
            where = folder if split != "all" else base
            raise DataError(f"No class folders found in {where}. {layout_help}")
    if layout == "train/val":
        only_train = sorted(class_dirs["train"].keys() - class_dirs["val"].keys())
        only_val = sorted(class_dirs["val"].keys() - class_dirs["train"].keys())
        if only_train or only_val:
            raise DataError(
                f"The train and validation folders of {base} have different classes: "
                f"only in train: {', '.join(only_train) or '(none)'}; "
                f"only in {splits['val'].name}: {', '.join(only_val) or '(none)'}. "
                "Every class needs a folder in both (check the spelling), or remove the extra folders."
            )
    classes = sorted(next(iter(class_dirs.values())))
    if len(classes) < 2:
        raise DataError(
            f"Found only one class ({classes[0]}) in {base}: a classifier needs at least 2 classes. " + layout_help
        )

    candidates: list[tuple[str, str, Path]] = []  # (split, class, path)
    for split, dirs in class_dirs.items():
        for c in classes:
            for p in _walk(dirs[c], base, skipped, set()):
                rel = p.relative_to(base).as_posix()
                if p.name.startswith("."):
                    skipped.append(Skipped(rel, "hidden file"))
                else:
                    candidates.append((split, c, p))
    decoded = DecodedImages(keep_decoded)
    verdicts = ScanVerdicts(base)

    def check(path: Path) -> str | None:
        known, reason = verdicts.get(path)
        if known:
            return reason
        try:
            decoded.offer(path, draft, load_rgb(path, draft=draft))
        except ImageError as e:
            reason = e.reason
        verdicts.put(path, reason)
        return reason

    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        reasons = list(pool.map(check, [p for _, _, p in candidates]))

    verdicts.save()
    good: dict[str, dict[str, list[Path]]] = {s: {c: [] for c in classes} for s in class_dirs}
    for (split, c, p), reason in zip(candidates, reasons, strict=True):
        if reason is None:
            good[split][c].append(p)
        else:
            skipped.append(Skipped(p.relative_to(base).as_posix(), reason))
    skipped.sort(key=lambda s: s.path)

    for split, dirs in class_dirs.items():
        for c in classes:
            n = len(good[split][c])
            prefix = dirs[c].relative_to(base).as_posix() + "/"
            bad = [s for s in skipped if s.path.startswith(prefix)]
            if n == 0 or (layout == "split" and n < 2):
                what = "no usable image" if n == 0 else "only 1 usable image"
                need = "images" if layout == "train/val" else "at least 2 images (one to train, one to validate)"
                why = f" {len(bad)} file(s) there were skipped: {_skip_summary(bad)}." if bad else ""
                raise DataError(f"Class {c!r} ({dirs[c]}) has {what}.{why} Add {need} to it, or remove the folder.")

    index = {c: i for i, c in enumerate(classes)}
    train: list[Sample] = []
    val: list[Sample] = []
    if layout == "train/val":
        for c in classes:
            train += [Sample(p, index[c]) for p in good["train"][c]]
            val += [Sample(p, index[c]) for p in good["val"][c]]
    else:
        for c in classes:
            files = good["all"][c]
            n_val = min(max(1, round(len(files) * val_split)), len(files) - 1)
            # one RNG per class, seeded by name: adding a class does not reshuffle the others
            held = set(random.Random(f"{seed}/{c}").sample(range(len(files)), n_val))
            train += [Sample(p, index[c]) for i, p in enumerate(files) if i not in held]
            val += [Sample(p, index[c]) for i, p in enumerate(files) if i in held]

    counts = {
        "train": {c: sum(s.label == index[c] for s in train) for c in classes},
        "val": {c: sum(s.label == index[c] for s in val) for c in classes},
    }
    report = DataReport(str(base), layout, classes, counts, skipped, used_split, used_seed)
    return Dataset(classes, train, val, report, decoded)


def _loose_reason(p: Path) -> str:
    if p.name.startswith("."):
        return "hidden file"
    if p.is_symlink() and not p.exists():
        return "broken symbolic link"
    return "not inside a class folder"


class ImageDataset:
    """Map-style dataset of ``(transform(load_rgb(path)), label)``, for ``torch.utils.data.DataLoader``.

    Images were validated by :func:`scan`; one that fails now (changed since) raises :class:`ImageError`
    naming the file rather than being silently replaced.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Any], Any] | None = None,
        *,
        draft: int | None = None,
        decoded: DecodedImages | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.draft = draft
        self.decoded = decoded

    @property
    def targets(self) -> list[int]:
        """Labels in sample order (for samplers and class weights)."""
        return [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        s = self.samples[i]
        try:
            img = self.decoded.take(s.path, self.draft) if self.decoded else None
            img = img or load_rgb(s.path, draft=self.draft)
        except ImageError as e:
            raise ImageError(e.path, f"{e.reason} (it was usable when the dataset was scanned)") from None
        return (self.transform(img) if self.transform else img), s.label


class MemoryImageDataset:
    """Images decoded once and kept in memory as uint8 ``(3, H, W)`` tensors, transformed per access.

    Fine-tuning reads every image once per epoch; decoding once per run instead saves the JPEG decode of every
    epoch after the first. ``prepare`` runs once per image at decode time (e.g. resize + centre crop for val, so
    that only the normalization runs per epoch), ``transform`` at every access.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        prepare: Callable[[Any], Any],
        transform: Callable[[Any], Any] | None = None,
        draft: int | None = None,
        workers: int | None = None,
        decoded: DecodedImages | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform

        def decode(s: Sample) -> Any:
            img = decoded.take(s.path, draft) if decoded else None
            return prepare(img or load_rgb(s.path, draft=draft))

        with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
            self.images = list(pool.map(decode, self.samples))  # PIL and torchvision release the GIL here

    @property
    def nbytes(self) -> int:
        return sum(int(t.numel() * t.element_size()) for t in self.images)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.samples[i].label


def estimated_decoded_bytes(samples: Sequence[Sample], shorter_side: int) -> int:
    """Rough memory of the samples decoded at ``shorter_side`` (4:3 images assumed; headers not read)."""
    return len(samples) * 3 * shorter_side * (shorter_side * 4 // 3)


def available_memory() -> int:
    """Bytes of memory available to this process (``MemAvailable``), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
