"""Dataset tables: a ``.csv`` or ``.tsv`` file with a path column, a label column and an optional split column.

Paths are relative to a data root (``--root``; default: the table's folder), and must stay under it: ``..``,
absolute paths elsewhere and symbolic links that resolve outside the root are refused, never followed. Every
listed file is checked as a folder's files are (:func:`graft.data.samples.validate_files`, same verdict cache), and
the samples come out as a folder scan gives them: classes are the sorted label names, samples class by class,
each class's files in path order (the order of a folder walk), so a table listing a folder's images with their
folder labels trains the very same run. Without a split column each class is split with the seeded
``val_split``, as the folder "split" layout does. Single-label only: a cell holding several labels is refused.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from graft.core.errors import DataError
from graft.data.images import DecodedImages
from graft.data.samples import (
    DataReport,
    Dataset,
    Sample,
    ScanVerdicts,
    Skipped,
    count_classes,
    split_per_class,
    validate_files,
)

#: table suffix -> field delimiter
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
#: column names tried when no column is given, case-insensitively (fastai's ``fname,labels,is_valid`` among them)
PATH_COLUMNS = ("fname", "path", "file", "filename", "image")
LABEL_COLUMNS = ("labels", "label", "class")
SPLIT_COLUMNS = ("is_valid", "split", "set")
#: split cell (lower case) -> split; booleans are fastai's ``is_valid``
SPLIT_VALUES = {
    **dict.fromkeys(("train", "training", "false", "0", "no"), "train"),
    **dict.fromkeys(("val", "valid", "validation", "true", "1", "yes"), "val"),
}
#: characters that separate several labels in one cell (a space does only between labels seen on their own)
_LABEL_SEPARATORS = (";", "|", ",")

Row = tuple[int, str, str, str | None]  # (line in the file, path relative to the root, label, split or None)


def scan_table(
    table: Path,
    *,
    val_split: float,
    seed: int,
    workers: int | None,
    draft: int,
    keep_decoded: int,
    exclude: dict[str, str] | None,
    path_col: str | None = None,
    label_col: str | None = None,
    split_col: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Read ``table``, validate every listed image, and build the train/val split (see the module docstring).

    Raises:
        DataError: the table cannot be used (one problem, with its line and what to do).
    """
    if not table.is_file():
        what = "does not exist" if not table.exists() else "is not a file"
        raise DataError(f"Data table {table} {what}. Check the path.")
    base = Path(os.path.abspath(os.path.expanduser(root))) if root is not None else table.parent
    if not base.is_dir():
        raise DataError(f"--root {base} is not a folder: pass the folder that the table's paths are relative to.")
    header, lines = _read(table)
    columns = _columns(table, header, {"path": path_col, "label": label_col, "split": split_col})
    rows = _rows(table, base, columns, header, lines)
    if columns["split"] is None and not 0 < val_split < 1:
        raise DataError(f"val_split must be between 0 and 1 (exclusive), got {val_split}.")

    skipped: list[Skipped] = []
    rows = _usable_rows(rows, base, skipped, exclude)
    in_train = {label for _, _, label, split in rows if split != "val"}
    val_only = sorted({label for _, _, label, split in rows if split == "val"} - in_train)
    for _, rel, label, _ in rows:
        if label in val_only:
            skipped.append(Skipped(rel, f"label {label!r} is only in val rows: no training row teaches it"))
    rows = [r for r in rows if r[2] in in_train]
    classes = sorted(in_train)
    if not classes:
        raise DataError(f"{table} has no usable training row; graft check {table} lists the skipped files.")
    if len(classes) < 2:
        raise DataError(f"{table} has one label ({classes[0]}) in its training rows: a classifier needs 2 or more.")

    # the order of a folder scan: class by class, each class's files by path (a folder walk sorts each level)
    rows.sort(key=lambda r: (r[2], r[1].split("/")))
    decoded = DecodedImages(keep_decoded)
    verdicts = ScanVerdicts(base)
    reasons = validate_files([base / r[1] for r in rows], decoded, verdicts, workers=workers, draft=draft)
    good: list[Row] = []
    for row, reason in zip(rows, reasons, strict=True):
        if reason is None:
            good.append(row)
        else:
            skipped.append(Skipped(row[1], reason))
    skipped.sort(key=lambda s: s.path)
    train, val = _split(table, base, classes, good, columns["split"] is not None, val_split, seed)

    used_split, used_seed = (None, None) if columns["split"] else (val_split, seed)
    counts = count_classes(classes, train, val)
    report = DataReport(str(base), "table", classes, counts, skipped, used_split, used_seed, str(table), columns)
    report.val_only = val_only
    return Dataset.of(classes, train, val, report, decoded, verdicts)


def _read(table: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank rows (with their line numbers) of a CSV/TSV file."""
    delimiter = TABLE_SUFFIXES[table.suffix.lower()]
    try:
        with open(table, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = [h.strip() for h in next(reader, [])]
            lines = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise DataError(f"{table} is not UTF-8 text: save the table as UTF-8 CSV/TSV.") from None
    except csv.Error as e:
        raise DataError(f"{table} is not a readable {table.suffix[1:].upper()} file: {e}.") from None
    except OSError as e:
        raise DataError(f"cannot read the data table {table}: {e.strerror or e}.") from None
    if not any(header):
        raise DataError(f"{table} is empty: it needs a header row (e.g. path,label) and one row per image.")
    return header, lines


def _columns(table: Path, header: list[str], given: dict[str, str | None]) -> dict[str, str | None]:
    """The column used for each of path, label and split: the one given (``--path-col`` ...), else the one whose
    name is a known default; path and label are required."""
    by_lower = {h.lower(): h for h in header if h}
    defaults = {"path": PATH_COLUMNS, "label": LABEL_COLUMNS, "split": SPLIT_COLUMNS}
    out: dict[str, str | None] = {}
    for kind, names in defaults.items():
        option = f"--{kind}-col"
        if given[kind] is not None:
            name = given[kind] if given[kind] in header else by_lower.get(given[kind].lower())
            if name is None:
                raise DataError(f"{table} has no column {given[kind]!r} ({option}); its columns: {', '.join(header)}.")
            out[kind] = name
            continue
        found = [by_lower[n] for n in names if n in by_lower]
        if len(found) > 1:
            raise DataError(f"{table}: columns {' and '.join(found)} could each be the {kind} column; pass {option}.")
        if not found and kind != "split":
            raise DataError(
                f"{table} has no {kind} column (looked for {', '.join(names)}; its columns: {', '.join(header)}). "
                f"Name it in the header, or pass {option} NAME."
            )
        out[kind] = found[0] if found else None
    return out


def _rows(
    table: Path, base: Path, columns: dict[str, str | None], header: list[str], lines: list[tuple[int, list[str]]]
) -> list[Row]:
    """Every row as (line, path relative to ``base``, label, split or None); a bad cell raises, with its line."""
    at = {kind: header.index(name) if name else None for kind, name in columns.items()}

    def cell(row: list[str], kind: str) -> str:
        i = at[kind]
        return row[i].strip() if i is not None and i < len(row) else ""

    singles = {cell(row, "label") for _, row in lines if not any(c.isspace() for c in cell(row, "label"))}
    real_base = base.resolve()
    out: list[Row] = []
    for line, row in lines:
        path, label = cell(row, "path"), cell(row, "label")
        if not path:
            raise DataError(f"{table} line {line}: the path ({columns['path']!r}) is empty; give every row a file.")
        if not label:
            raise DataError(
                f"{table} line {line}: the label of {path} ({columns['label']!r}) is empty; give every row its "
                "class, or remove the row."
            )
        tokens = label.split()
        if any(s in label for s in _LABEL_SEPARATORS) or sum(t in singles for t in tokens) > 1:
            raise DataError(
                f"{table} line {line}: the label {label!r} of {path} holds several labels; multi-label tables are "
                "not supported yet: give each row one label."
            )
        split = None
        if at["split"] is not None:
            split = SPLIT_VALUES.get(cell(row, "split").lower())
            if split is None:
                raise DataError(
                    f"{table} line {line}: unknown split value {cell(row, 'split')!r} in column {columns['split']!r}; "
                    "use train or val (valid, validation), or True/False for is_valid."
                )
        out.append((line, _inside(table, line, base, real_base, path), label, split))
    return out


def _inside(table: Path, line: int, base: Path, real_base: Path, path: str) -> str:
    """``path`` relative to the root, posix; a path that leaves the root (``..``, an absolute path elsewhere, a
    symbolic link to elsewhere) is refused, not followed."""
    given = Path(path)
    full = Path(os.path.normpath(given if given.is_absolute() else base / given))
    resolved = full.resolve()
    if full.is_relative_to(base) and resolved.is_relative_to(real_base):
        return full.relative_to(base).as_posix()
    how = "is" if not full.is_relative_to(base) else f"is a symbolic link to {resolved},"
    raise DataError(
        f"{table} line {line}: {path!r} {how} outside the data root {base}; graft reads only files under the root "
        "(refused, not followed): move the file under it, or pass --root with a folder that holds every listed file."
    )


def _usable_rows(rows: list[Row], base: Path, skipped: list[Skipped], exclude: dict[str, str] | None) -> list[Row]:
    """The rows worth decoding: repeated, excluded, missing and folder entries go to ``skipped``."""
    first: dict[str, int] = {}
    out: list[Row] = []
    for row in rows:
        line, rel = row[0], row[1]
        full = base / rel
        if rel in first:
            skipped.append(Skipped(rel, f"listed again on line {line} (line {first[rel]} is used)"))
        elif exclude and rel in exclude:
            skipped.append(Skipped(rel, f"excluded: {exclude[rel]}"))
        elif full.is_dir():
            skipped.append(Skipped(rel, "a folder, not an image file"))
        elif not full.exists():
            skipped.append(Skipped(rel, "listed in the table, but there is no such file"))
        else:
            out.append(row)
        first.setdefault(rel, line)
    return out


def _split(
    table: Path, base: Path, classes: list[str], good: list[Row], has_split: bool, val_split: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """The samples: the table's own split, or ``val_split`` of each class held out; each class needs a usable
    training image (two without a split column: one to train, one to validate), and val cannot be empty."""
    files: dict[str, dict[str, list[Path]]] = {s: {c: [] for c in classes} for s in ("train", "val", "all")}
    for _, rel, label, split in good:
        files[split or "all"][label].append(base / rel)
    need = 1 if has_split else 2
    for c in classes:
        n = len(files["train" if has_split else "all"][c])
        if n < need:
            what = "no usable training image" if n == 0 else "only 1 usable image"
            add = "training rows for it" if has_split else "at least 2 images (one to train, one to validate)"
            raise DataError(
                f"Label {c!r} of {table} has {what} (graft check {table} lists the skipped files). Add {add}, "
                "or remove its rows."
            )
    if not has_split:
        return split_per_class(classes, files["all"], val_split, seed)
    index = {c: i for i, c in enumerate(classes)}
    train = [Sample(p, index[c]) for c in classes for p in files["train"][c]]
    val = [Sample(p, index[c]) for c in classes for p in files["val"][c]]
    if not val:
        raise DataError(f"{table} has no usable val row: mark some rows val (is_valid True), or drop the split column.")
    return train, val
