"""Dataset folders: find the classes, validate every image by decoding it, split, and report.

Two layouts are accepted: ``ROOT/train/<class>/*`` + ``ROOT/val/<class>/*`` ("train/val"; the val folder
may also be called ``valid`` or ``validation``), or ``ROOT/<class>/*`` ("split"), which is split per class
with a seeded RNG. A ``test/`` folder of class folders beside them is a held-out test split
(:func:`held_out_test`): it is never read for training or validation. Files are recognised by their content,
never by their extension, and every candidate is fully decoded once during the scan, so a training run never
meets a broken file. Files that cannot be used are skipped and listed with a reason in the :class:`DataReport`.
"""

from __future__ import annotations

import os
from pathlib import Path

from graft.core.errors import DataError
from graft.data.images import SCAN_DRAFT, DecodedImages
from graft.data.samples import (
    DataReport,
    Dataset,
    Sample,
    ScanVerdicts,
    Skipped,
    count_classes,
    is_folder,
    outside_link,
    real_path,
    split_per_class,
    validate_files,
)
from graft.data.tables import TABLE_SUFFIXES, is_dataframe, scan_table

# the scan's types live in graft.data.samples (shared with tables); importers of this module find them here too
__all__ = [
    "DataReport",
    "Dataset",
    "Sample",
    "ScanVerdicts",
    "Skipped",
    "held_out_test",
    "read_exclude_list",
    "scan",
]

_VAL_DIR_NAMES = ("val", "valid", "validation")
_ACCESS = "Give this user read and search permission on the data (e.g. chmod -R u+rX DATA), or run as one who has it."
_LAYOUT_HELP = (
    "A dataset is a folder with one sub-folder per class (e.g. data/cats/*.jpg, data/dogs/*.jpg), "
    "or with train/ and val/ folders that each hold the same class sub-folders."
)


def _subdirs(folder: Path) -> list[Path]:
    """The folders in ``folder`` (hidden ones and entries that cannot be looked at left out), sorted by name."""
    return sorted((p for p in folder.iterdir() if is_folder(p)[0] and not p.name.startswith(".")), key=lambda p: p.name)


def _walk(
    folder: Path, base: Path, skipped: list[Skipped], seen: set[tuple[int, int]], inside: tuple[Path, ...]
) -> list[Path]:
    """Every non-directory entry under ``folder``, recursively, following symlinks but not loops, nor links out of
    ``inside`` (the resolved data root and class folder: a class folder may itself be a link to elsewhere, the
    folders in it stay within it) or to a folder holding the data root; those are skipped with the reason."""
    rel = folder.relative_to(base).as_posix() + "/"
    if (outside := outside_link(folder, inside)) is not None:
        skipped.append(Skipped(rel, outside))
        return []
    try:
        st = folder.stat()
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as e:
        skipped.append(Skipped(rel, f"cannot read folder: {e.strerror}"))
        return []
    if (st.st_dev, st.st_ino) in seen:
        return []
    seen.add((st.st_dev, st.st_ino))
    out: list[Path] = []
    for p in entries:
        folder_, why = is_folder(p)
        if why is not None:
            skipped.append(Skipped(p.relative_to(base).as_posix(), why))
        elif folder_:
            if not p.name.startswith("."):
                out += _walk(p, base, skipped, seen, inside)
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
    path_col: str | None = None,
    label_col: str | None = None,
    split_col: str | None = None,
    table_root: str | os.PathLike[str] | None = None,
    label_delim: str | None = None,
    task: str = "auto",
) -> Dataset:
    """Find the classes and images under ``root``, validate every image, and build the train/val split.

    Args:
        root: a folder with ``train/`` and ``val/`` (or ``valid/``, ``validation/``) sub-folders holding one
            folder per class, or with one folder per class directly (then split here); or a ``.csv``/``.tsv``
            table of paths and labels, or a pandas DataFrame of them (:func:`graft.data.tables.scan_table`, which
            takes ``path_col``, ``label_col``, ``split_col``, ``table_root``, ``label_delim`` and ``task``).
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
    table = {"path_col": path_col, "label_col": label_col, "split_col": split_col, "root": table_root}
    common = {"workers": workers, "draft": draft, "keep_decoded": keep_decoded, "exclude": exclude}
    labels = {"label_delim": label_delim, "task": task}
    if is_dataframe(root):
        return scan_table(root, val_split=val_split, seed=seed, **common, **table, **labels)
    base = Path(os.path.abspath(os.path.expanduser(root)))
    if base.suffix.lower() in TABLE_SUFFIXES and not is_folder(base)[0]:
        return scan_table(base, val_split=val_split, seed=seed, **common, **table, **labels)
    _check_root(base)
    given = [f"--{k.replace('_', '-')}" for k, v in (table | labels).items() if v not in (None, "auto")]
    if given:
        raise DataError(f"{', '.join(given)} only apply when DATA is a .csv/.tsv table; {base} is a folder.")
    skipped: list[Skipped] = []
    try:
        layout, splits = _layout(base, val_split)
        class_dirs = _class_folders(base, layout, splits, skipped)
    except PermissionError as e:  # the root, or its train/ or val/ folder, cannot be listed
        raise DataError(_unreadable(Path(e.filename or base), e)) from None
    used_split, used_seed = (val_split, seed) if layout == "split" else (None, None)
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

    report = DataReport(str(base), layout, classes, count_classes(classes, train, val), skipped, used_split, used_seed)
    return Dataset.of(classes, train, val, report, decoded, verdicts)


def _check_root(base: Path) -> None:
    """The data root exists, is a folder, and can be looked at; else a :class:`DataError` that says which."""
    try:
        if not base.exists():
            raise DataError(f"Data folder {base} does not exist. Check the path. {_LAYOUT_HELP}")
        if not base.is_dir():
            raise DataError(f"Data path {base} is not a folder or a .csv/.tsv table. {_LAYOUT_HELP}")
    except OSError as e:
        raise DataError(_unreadable(base, e)) from None


def _unreadable(folder: Path, e: OSError) -> str:
    return f"cannot read the data folder {folder}: {e.strerror or e}. {_ACCESS}"


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
        if split != "all" and real_path(base).is_relative_to(target := real_path(folder)):
            raise DataError(
                f"{folder} is a symbolic link to {target}, which holds the data folder itself: not followed."
            )
        for p in sorted(folder.iterdir(), key=lambda p: p.name):
            folder_, why = is_folder(p)
            if not folder_:
                skipped.append(Skipped(p.relative_to(base).as_posix(), why or _loose_reason(p)))
        held_out = held_out_test(folder) if split == "all" else None  # DATA/test/<class>: not a class
        class_dirs[split] = {d.name: d for d in _subdirs(folder) if d != held_out}
        if not class_dirs[split]:
            where = folder if split != "all" else base
            unreadable = [s for s in skipped if s.reason.startswith("cannot read")]
            if unreadable:  # e.g. a folder without search permission: its entries cannot be told apart
                raise DataError(f"No class folder of {where} can be read ({_skip_summary(unreadable)}). " + _ACCESS)
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
    real_base = real_path(base)
    for split, dirs in class_dirs.items():
        for c in classes:
            for p in _walk(dirs[c], base, skipped, set(), (real_base, real_path(dirs[c]))):
                rel = p.relative_to(base).as_posix()
                if p.name.startswith("."):
                    skipped.append(Skipped(rel, "hidden file"))
                elif exclude and rel in exclude:
                    skipped.append(Skipped(rel, f"excluded: {exclude[rel]}"))
                else:
                    candidates.append((split, c, p))

    reasons = validate_files([p for _, _, p in candidates], decoded, verdicts, workers=workers, draft=draft)
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
    if layout != "train/val":
        return split_per_class(classes, good["all"], val_split, seed)
    index = {c: i for i, c in enumerate(classes)}
    train: list[Sample] = []
    val: list[Sample] = []
    for c in classes:
        train += [Sample(p, index[c]) for p in good["train"][c]]
        val += [Sample(p, index[c]) for p in good["val"][c]]
    return train, val


def held_out_test(base: Path) -> Path | None:
    """``base``'s test folder (``test/``, any case) when it holds a held-out test split: class folders named as
    ``base``'s other folders (a train/val layout's train/val folders, or a split layout's class folders). Training
    never reads it; ``graft train`` evaluates the best model on it once at the end."""
    top = _subdirs(base)
    lower = {d.name.lower(): d for d in top}
    test = lower.get("test")
    if test is None:
        return None
    if "train" in lower and any(n in lower for n in _VAL_DIR_NAMES):
        return test
    inner = {d.name for d in _subdirs(test)}
    return test if inner and inner <= {d.name for d in top if d != test} else None


def _loose_reason(p: Path) -> str:
    if p.name.startswith("."):
        return "hidden file"
    if p.is_symlink() and not p.exists():
        return "broken symbolic link"
    return "not inside a class folder"
