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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graft.core.errors import DataError, ImageError
from graft.data.images import SCAN_DRAFT, DecodedImages, load_rgb
from graft.data.quality import measure

_VAL_DIR_NAMES = ("val", "valid", "validation")
_LAYOUT_HELP = (
    "A dataset is a folder with one sub-folder per class (e.g. data/cats/*.jpg, data/dogs/*.jpg), "
    "or with train/ and val/ folders that each hold the same class sub-folders."
)


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
    #: per usable file, what :func:`graft.data.quality.measure` took during its validating decode (cached with the
    #: verdict): graft doctor's image measures and hashes, and train's leakage check
    measures: dict[Path, dict[str, Any]] = field(default_factory=dict)

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
        from graft.core.paths import cache_root

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
        if isinstance(entry, list) and len(entry) in (3, 4) and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return True, entry[2]
        return False, None

    def measures(self, path: Path) -> Any:
        """What :func:`graft.data.quality.measure` stored with the verdict of ``path`` (None if nothing)."""
        entry = self.known.get(_json_safe(str(path)))
        return entry[3] if isinstance(entry, list) and len(entry) == 4 else None

    def put(self, path: Path, reason: str | None, measures: dict[str, Any] | None = None) -> None:
        try:
            st = path.stat()
        except OSError:
            return  # gone or unreadable: decide again next time
        self.known[_json_safe(str(path))] = [st.st_size, st.st_mtime_ns, reason, *([measures] if measures else [])]
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        from graft.core.checkpoint import atomic_write_json

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
    draft: int = SCAN_DRAFT,
    keep_decoded: int = 0,
    exclude: dict[str, str] | None = None,
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
        exclude: files to leave out (path relative to ``root``, posix -> reason; :func:`read_exclude_list`):
            listed as skipped with their reason.

    Raises:
        DataError: the folder cannot be used; the message says what is wrong and what to do.
    """
    base = Path(os.path.abspath(os.path.expanduser(root)))
    if not base.exists():
        raise DataError(f"Data folder {base} does not exist. Check the path. {_LAYOUT_HELP}")
    if not base.is_dir():
        raise DataError(f"Data path {base} is not a folder. {_LAYOUT_HELP}")
    layout, splits = _layout(base, val_split)
    used_split, used_seed = (val_split, seed) if layout == "split" else (None, None)

    skipped: list[Skipped] = []
    class_dirs = _class_folders(base, layout, splits, skipped)
    classes = sorted(next(iter(class_dirs.values())))
    if len(classes) < 2:
        raise DataError(
            f"Found only one class ({classes[0]}) in {base}: a classifier needs at least 2 classes. " + _LAYOUT_HELP
        )

    decoded = DecodedImages(keep_decoded)
    verdicts = ScanVerdicts(base)
    good = _validate(
        base, class_dirs, classes, skipped, decoded, verdicts, workers=workers, draft=draft, exclude=exclude
    )
    _check_class_sizes(base, layout, class_dirs, classes, good, skipped)
    train, val = _split_samples(layout, classes, good, val_split, seed)

    index = {c: i for i, c in enumerate(classes)}
    counts = {
        "train": {c: sum(s.label == index[c] for s in train) for c in classes},
        "val": {c: sum(s.label == index[c] for s in val) for c in classes},
    }
    report = DataReport(str(base), layout, classes, counts, skipped, used_split, used_seed)
    measures = {s.path: verdicts.measures(s.path) for s in train + val}
    return Dataset(classes, train, val, report, decoded, {p: m for p, m in measures.items() if m})


def read_exclude_list(path: str | os.PathLike[str]) -> dict[str, str]:
    """``path<TAB>reason`` lines (as ``graft doctor --exclude-list`` writes them; ``#`` starts a comment line, the
    reason is optional) -> {path relative to the data root: reason}."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise DataError(f"cannot read the exclude list {path}: {e.strerror or e}; pass an existing file") from None
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            file, _, reason = line.partition("\t")
            out[file.strip().removeprefix("./")] = reason.strip() or f"listed in {path}"
    return out


def _layout(base: Path, val_split: float) -> tuple[str, dict[str, Path]]:
    """``("train/val", {"train": ..., "val": ...})`` or ``("split", {"all": base})``, or why neither fits."""
    top = {d.name.lower(): d for d in _subdirs(base)}
    train_dir, vals = top.get("train"), [top[n] for n in _VAL_DIR_NAMES if n in top]
    if train_dir and len(vals) > 1:
        names = ", ".join(v.name + "/" for v in vals)
        raise DataError(f"{base} has several validation folders ({names}). Keep only one of them.")
    if train_dir and vals:
        return "train/val", {"train": train_dir, "val": vals[0]}
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
    return "split", {"all": base}


def _class_folders(
    base: Path, layout: str, splits: dict[str, Path], skipped: list[Skipped]
) -> dict[str, dict[str, Path]]:
    """split -> class -> folder; loose files beside the class folders go to ``skipped``. Both splits of a
    train/val layout must have the same classes."""
    class_dirs: dict[str, dict[str, Path]] = {}
    for split, folder in splits.items():
        for p in sorted(folder.iterdir(), key=lambda p: p.name):
            if not p.is_dir():
                skipped.append(Skipped(p.relative_to(base).as_posix(), _loose_reason(p)))
        class_dirs[split] = {d.name: d for d in _subdirs(folder)}
        if not class_dirs[split]:
            where = folder if split != "all" else base
            raise DataError(f"No class folders found in {where}. {_LAYOUT_HELP}")
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
    return class_dirs


def _validate(
    base: Path,
    class_dirs: dict[str, dict[str, Path]],
    classes: list[str],
    skipped: list[Skipped],
    decoded: DecodedImages,
    verdicts: ScanVerdicts,
    *,
    workers: int | None,
    draft: int,
    exclude: dict[str, str] | None,
) -> dict[str, dict[str, list[Path]]]:
    """split -> class -> usable images, each decoded once (or known good from the verdict cache); every other
    file goes to ``skipped`` with its reason, and ``skipped`` ends sorted by path."""
    candidates: list[tuple[str, str, Path]] = []  # (split, class, path)
    for split, dirs in class_dirs.items():
        for c in classes:
            for p in _walk(dirs[c], base, skipped, set()):
                rel = p.relative_to(base).as_posix()
                if p.name.startswith("."):
                    skipped.append(Skipped(rel, "hidden file"))
                elif exclude and rel in exclude:
                    skipped.append(Skipped(rel, f"excluded: {exclude[rel]}"))
                else:
                    candidates.append((split, c, p))

    def check(path: Path) -> str | None:
        known, reason = verdicts.get(path)
        if known:
            return reason
        measures = None
        try:
            image = load_rgb(path, draft=draft)
            measures = measure(path, image, draft)  # graft doctor's numbers, while the image is decoded anyway
            decoded.offer(path, draft, image)
        except ImageError as e:
            reason = e.reason
        verdicts.put(path, reason, measures)
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
    return good


def _check_class_sizes(
    base: Path,
    layout: str,
    class_dirs: dict[str, dict[str, Path]],
    classes: list[str],
    good: dict[str, dict[str, list[Path]]],
    skipped: list[Skipped],
) -> None:
    """Every class folder needs a usable image (two in the split layout: one to train, one to validate)."""
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


def _split_samples(
    layout: str, classes: list[str], good: dict[str, dict[str, list[Path]]], val_split: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """The train and val samples: the folders' own split, or ``val_split`` of each class held out."""
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
    return train, val


def _loose_reason(p: Path) -> str:
    if p.name.startswith("."):
        return "hidden file"
    if p.is_symlink() and not p.exists():
        return "broken symbolic link"
    return "not inside a class folder"
