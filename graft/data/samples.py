"""What a scan produces and how it checks files, shared by dataset folders (:mod:`graft.data.folders`) and tables
(:mod:`graft.data.tables`): :class:`Sample`, :class:`Skipped`, :class:`DataReport`, :class:`Dataset`, the verdict
cache (:class:`ScanVerdicts`), the validating decode (:func:`validate_files`) and the seeded per-class split
(:func:`split_per_class`). One implementation of each, so a table and a folder holding the same images give the
same samples, in the same order, with the same skip reasons.
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

from graft.core.errors import ImageError
from graft.data.images import DecodedImages, load_rgb
from graft.data.quality import measure


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
    #: a table's file and the columns read from it ({"path", "label", "split"} -> column name or None)
    table: str | None = None
    columns: dict[str, str | None] | None = None
    #: labels that only val rows of a table carry (those rows are skipped: the model could not learn them)
    val_only: list[str] = field(default_factory=list)
    #: "single" (one label per image) or "multilabel" (a table's rows hold any number of labels, none included)
    task: str = "single"

    @property
    def n_train(self) -> int:
        return sum(self.counts["train"].values())

    @property
    def n_val(self) -> int:
        return sum(self.counts["val"].values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with ``n_train`` and ``n_val`` totals."""
        out = {**asdict(self), "n_train": self.n_train, "n_val": self.n_val}
        if self.table is None:  # a folder's report keeps its keys
            for key in ("table", "columns", "val_only", "task"):
                del out[key]
        return out

    def format(self) -> str:
        """Human-readable report, as printed by ``graft check``."""
        held = f"{self.val_split or 0:.0%} of each class held out, seed {self.seed}"
        if self.layout == "split":
            how = f"split (one folder per class; {held})"
        elif self.layout == "table":
            cols = self.columns or {}
            split = f"split column {cols['split']!r}" if cols.get("split") else f"no split column: {held}"
            how = f"table {self.table} (path column {cols.get('path')!r}, label column {cols.get('label')!r}, {split})"
            how += ", multi-label" if self.task == "multilabel" else ""
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
        if self.val_only:
            lines += [
                "",
                f"warning: label(s) only in val rows, skipped (no training rows to learn them from): "
                f"{', '.join(self.val_only)}",
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
    #: multi-label datasets: the distinct label sets (sorted class indices); a sample's ``label`` indexes this list
    label_sets: list[tuple[int, ...]] | None = None

    @property
    def task(self) -> str:
        return "single" if self.label_sets is None else "multilabel"

    def names_of(self, sample: Sample) -> list[str]:
        """The class names of ``sample`` (one, or a multi-label sample's any number)."""
        if self.label_sets is None:
            return [self.classes[sample.label]]
        return [self.classes[i] for i in self.label_sets[sample.label]]

    @classmethod
    def of(
        cls,
        classes: list[str],
        train: list[Sample],
        val: list[Sample],
        report: DataReport,
        decoded: DecodedImages,
        verdicts: ScanVerdicts,
        label_sets: list[tuple[int, ...]] | None = None,
    ) -> Dataset:
        """The dataset of a finished scan, with the measures its validating decodes stored in ``verdicts``."""
        measures = {s.path: verdicts.measures(s.path) for s in train + val}
        return cls(classes, train, val, report, decoded, {p: m for p, m in measures.items() if m}, label_sets)

    def split_labels(self) -> dict[str, list[Any]]:
        """The class name of every entry of :meth:`split_dict`, in the same order (saved for tables, whose paths
        do not name the class); a list of names per entry for a multi-label dataset."""
        name = (lambda s: self.classes[s.label]) if self.label_sets is None else self.names_of
        return {k: [name(s) for s in v] for k, v in (("train", self.train), ("val", self.val))}

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
        from graft.core.atomic import atomic_write_json

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, {"version": self.VERSION, "base": self.base, "files": self.known})
        except OSError:
            pass  # a read-only cache folder only costs the next scan its decodes


def is_folder(path: Path) -> tuple[bool, str | None]:
    """(whether ``path`` is a folder, following links; why it cannot be told or None): an entry that cannot be
    looked at (EACCES in a folder without search permission) is a reason to skip it, not an exception."""
    try:
        return path.is_dir(), None
    except OSError as e:
        return False, f"cannot read: {e.strerror or e}"


def real_path(path: Path) -> Path:
    """``path`` with every symbolic link resolved, as far as they resolve (never raises, loops included)."""
    return Path(os.path.realpath(path))


def outside_link(folder: Path, inside: tuple[Path, ...]) -> str | None:
    """Why a walk does not enter ``folder``, or None: it resolves (through a symbolic link) outside every folder of
    ``inside`` (resolved paths; the first is the data root), or it holds the data root itself (a link to ``/``
    or to a parent: walking it would read the whole disk, the data included)."""
    target = real_path(folder)
    if inside[0].is_relative_to(target):
        return f"symbolic link to {target}, a folder that holds the data folder itself (not followed)"
    if any(target.is_relative_to(root) for root in inside):
        return None
    return f"symbolic link to {target}, a folder outside the data root (not followed)"


def _json_safe(text: str) -> str:
    """File names that are not UTF-8 (lone surrogates in Python) as JSON-safe text."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def count_classes(
    classes: list[str], train: list[Sample], val: list[Sample], label_sets: list[tuple[int, ...]] | None = None
) -> dict[str, dict[str, int]]:
    """``{"train": {class: n}, "val": {class: n}}``, as :class:`DataReport` keeps them (multi-label: the images
    that carry each class)."""
    if label_sets is not None:
        return {
            k: {c: sum(i in label_sets[s.label] for s in v) for i, c in enumerate(classes)}
            for k, v in (("train", train), ("val", val))
        }
    index = {c: i for i, c in enumerate(classes)}
    return {
        "train": {c: sum(s.label == index[c] for s in train) for c in classes},
        "val": {c: sum(s.label == index[c] for s in val) for c in classes},
    }


def validate_files(
    paths: list[Path], decoded: DecodedImages, verdicts: ScanVerdicts, *, workers: int | None, draft: int
) -> list[str | None]:
    """Per path, None when it is a usable image, else the reason it is skipped: each file is fully decoded once
    (at JPEG draft size ``draft``), or its verdict is taken from ``verdicts`` when the file is unchanged. The
    decode also takes graft doctor's measures, stored with the verdict; ``verdicts`` is saved at the end."""

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
        reasons = list(pool.map(check, paths))
    verdicts.save()
    return reasons


def split_per_class(
    classes: list[str], files: dict[str, list[Path]], val_split: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``val_split`` of each class's ``files`` (at least one, never all) for validation; the rest train.
    Samples come class by class, each class's files in the given order."""
    index = {c: i for i, c in enumerate(classes)}
    train: list[Sample] = []
    val: list[Sample] = []
    for c in classes:
        n_val = min(max(1, round(len(files[c]) * val_split)), len(files[c]) - 1)
        # one RNG per class, seeded by name: adding a class does not reshuffle the others
        held = set(random.Random(f"{seed}/{c}").sample(range(len(files[c])), n_val))
        train += [Sample(p, index[c]) for i, p in enumerate(files[c]) if i not in held]
        val += [Sample(p, index[c]) for i, p in enumerate(files[c]) if i in held]
    return train, val
