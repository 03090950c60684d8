"""Dataset tables: a ``.csv`` or ``.tsv`` file with a path column, a label column and an optional split column.

Paths are relative to a data root (``--root``; default: the table's folder), and must stay under it: ``..``,
absolute paths elsewhere and symbolic links that resolve outside the root are refused, never followed. Every
listed file is checked as a folder's files are (:func:`graft.data.samples.validate_files`, same verdict cache), and
the samples come out as a folder scan gives them: classes are the sorted label names, samples class by class,
each class's files in path order (the order of a folder walk), so a table listing a folder's images with their
folder labels trains the very same run. Without a split column each class is split with the seeded
``val_split``, as the folder "split" layout does.

A pandas ``DataFrame`` is read as a table is (its columns, the same rules; ``root`` defaults to the current folder).
Multi-label tables (``task="multilabel"``, or ``"auto"`` when ``label_delim`` is given or a cell holds several
labels): a label cell holds any number of labels (none: an image with no class, every output negative); the samples'
``label`` then indexes ``Dataset.label_sets``, and without a split column each distinct label set is split with
``val_split`` as a class is.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.core.errors import DataError
from graft.data.images import DecodedImages
from graft.data.samples import (
    DataReport,
    Dataset,
    Sample,
    ScanVerdicts,
    Skipped,
    count_classes,
    is_folder,
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
#: characters that separate several labels in one cell when no --label-delim is given (a space does only between
#: labels seen on their own)
_LABEL_SEPARATORS = (";", "|", ",")

#: (line in the file or row of a DataFrame, path relative to the root, labels, split or None)
Row = tuple[int, str, tuple[str, ...], str | None]


def scan_table(
    table: Any,
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
    label_delim: str | None = None,
    task: str = "auto",
) -> Dataset:
    """Read ``table`` (a .csv/.tsv path or a pandas DataFrame), validate every listed image, and build the
    train/val split (see the module docstring).

    Raises:
        DataError: the table cannot be used (one problem, with its line and what to do).
    """
    source, base, header, lines = _open(table, root)
    columns = _columns(source.name, header, {"path": path_col, "label": label_col, "split": split_col})
    rows, multilabel = read_rows(source, base, columns, header, lines, label_delim=label_delim, task=task)
    if columns["split"] is None and not 0 < val_split < 1:
        raise DataError(f"val_split must be between 0 and 1 (exclusive), got {val_split}.")

    skipped: list[Skipped] = []
    rows = _usable_rows(rows, base, skipped, exclude, source.unit)
    in_train = {label for _, _, labels, split in rows if split != "val" for label in labels}
    val_only = sorted({label for _, _, labels, split in rows if split == "val" for label in labels} - in_train)
    rows = _drop_val_only(rows, set(val_only), skipped, multilabel)
    classes = sorted(in_train)
    if not classes:
        raise DataError(f"{source.name} has no usable training row; graft check {source.name} lists the skipped files.")
    if len(classes) < 2 and not multilabel:
        raise DataError(
            f"{source.name} has one label ({classes[0]}) in its training rows: a classifier needs 2 or more."
        )

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
    sets = sorted({tuple(classes.index(c) for c in r[2]) for r in good}) if multilabel else None
    train, val = _split(source.name, base, classes, good, columns["split"] is not None, val_split, seed, sets)

    used_split, used_seed = (None, None) if columns["split"] else (val_split, seed)
    counts = count_classes(classes, train, val, sets)
    report = DataReport(str(base), "table", classes, counts, skipped, used_split, used_seed, source.name, columns)
    report.val_only = val_only
    report.task = "multilabel" if multilabel else "single"
    return Dataset.of(classes, train, val, report, decoded, verdicts, sets)


def table_items(
    table: Path, classes: list[str], *, multilabel: bool, **options: Any
) -> tuple[list[Path], list[tuple[int, ...]]]:
    """The images of a table to evaluate a run on, with their labels as class indices of ``classes`` (the run's):
    its val rows when it has a split column, else every row. ``options``: ``path_col``, ``label_col``,
    ``split_col``, ``label_delim``, ``root`` (as the run was trained with). Files are not opened here (the
    evaluation lists unreadable ones); a label the run does not know is an error."""
    source, base, header, lines = _open(table, options.get("root"))
    given = {kind: options.get(f"{kind}_col") for kind in ("path", "label", "split")}
    columns = _columns(source.name, header, given)
    task = "multilabel" if multilabel else "single"
    rows, _ = read_rows(source, base, columns, header, lines, label_delim=options.get("label_delim"), task=task)
    if columns["split"] is not None:
        rows = [r for r in rows if r[3] == "val"]
    unknown = sorted({label for r in rows for label in r[2]} - set(classes))
    if unknown:
        raise DataError(
            f"{source.name} has label(s) the model does not know: {', '.join(unknown)} (its classes: "
            f"{', '.join(classes)}); evaluate on images of the run's classes."
        )
    if not rows:
        raise DataError(f"{source.name} lists no image to evaluate (no val row).")
    index = {c: i for i, c in enumerate(classes)}
    return [base / r[1] for r in rows], [tuple(index[label] for label in r[2]) for r in rows]


@dataclass(frozen=True)
class _Source:
    """Where rows come from, for messages: a file (``t.csv line 6``) or a DataFrame (``DataFrame row 3``)."""

    name: str
    unit: str  # "line" or "row"

    def at(self, line: int) -> str:
        return f"{self.name} {self.unit} {line}"


def is_dataframe(data: Any) -> bool:
    """A pandas DataFrame (or anything with its ``columns`` and ``itertuples``), without importing pandas."""
    return hasattr(data, "columns") and hasattr(data, "itertuples") and not isinstance(data, str | os.PathLike)


def _open(
    table: Any, root: str | os.PathLike[str] | None
) -> tuple[_Source, Path, list[str], list[tuple[int, list[str]]]]:
    """(source, data root, header, rows with their line numbers) of a table file or a DataFrame."""
    if is_dataframe(table):
        source, header, lines = _Source("DataFrame", "row"), *_frame(table)
        default_root = Path.cwd()
    else:
        table = Path(table)
        try:
            if not table.is_file():
                what = "does not exist" if not table.exists() else "is not a file"
                raise DataError(f"Data table {table} {what}. Check the path.")
        except OSError as e:  # a folder on its path without search permission
            raise DataError(f"cannot read the data table {table}: {e.strerror or e}.") from None
        source, (header, lines), default_root = _Source(str(table), "line"), _read(table), table.parent
    base = Path(os.path.abspath(os.path.expanduser(root))) if root is not None else default_root
    folder, why = is_folder(base)
    if why is not None:
        raise DataError(f"cannot read --root {base}: {why}; give this user read and search permission on it.")
    if not folder:
        raise DataError(f"--root {base} is not a folder: pass the folder that the table's paths are relative to.")
    return source, base, header, lines


def _frame(df: Any) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A DataFrame's header and rows as a CSV reader gives them: text cells, missing values (None, NaN) empty; rows
    are numbered by their index label when it is an integer, else by position."""
    header = [str(c).strip() for c in df.columns]
    if not any(header):
        raise DataError("the DataFrame has no columns: it needs a path and a label column, one row per image.")

    def text(value: Any) -> str:
        if value is None or (isinstance(value, float) and value != value):  # NaN is not equal to itself
            return ""
        return str(value)

    lines = []
    for position, (index, *cells) in enumerate(df.itertuples(index=True, name=None)):
        line = index if isinstance(index, int) else position
        row = [text(c) for c in cells]
        if any(c.strip() for c in row):
            lines.append((line, row))
    return header, lines


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


def _columns(table: str, header: list[str], given: dict[str, str | None]) -> dict[str, str | None]:
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


def read_rows(
    source: _Source,
    base: Path,
    columns: dict[str, str | None],
    header: list[str],
    lines: list[tuple[int, list[str]]],
    *,
    label_delim: str | None = None,
    task: str = "auto",
) -> tuple[list[Row], bool]:
    """Every row as (line, path relative to ``base``, labels, split or None), and whether the table is multi-label
    (``task``; ``auto``: when ``label_delim`` is given or a cell holds several labels). A bad cell raises, with its
    line."""
    at = {kind: header.index(name) if name else None for kind, name in columns.items()}

    def cell(row: list[str], kind: str) -> str:
        i = at[kind]
        return row[i].strip() if i is not None and i < len(row) else ""

    cells = [cell(row, "label") for _, row in lines]
    split_cell = _label_splitter(cells, label_delim)
    several = [i for i, c in enumerate(cells) if len(split_cell(c)) > 1]
    multilabel = task == "multilabel" or (task == "auto" and (label_delim is not None or bool(several)))
    if several and not multilabel:
        line, label = lines[several[0]][0], cells[several[0]]
        raise DataError(
            f"{source.at(line)}: the label {label!r} holds several labels, and --task single was asked for: pass "
            "--task multilabel (or auto), or give each row one label."
        )
    real_base = base.resolve()
    out: list[Row] = []
    for (line, row), label in zip(lines, cells, strict=True):
        path = cell(row, "path")
        if not path:
            raise DataError(f"{source.at(line)}: the path ({columns['path']!r}) is empty; give every row a file.")
        if not label and not multilabel:
            raise DataError(
                f"{source.at(line)}: the label of {path} ({columns['label']!r}) is empty; give every row its "
                "class, or remove the row (in a multi-label table, --task multilabel, an empty label means none)."
            )
        split = None
        if at["split"] is not None:
            split = SPLIT_VALUES.get(cell(row, "split").lower())
            if split is None:
                raise DataError(
                    f"{source.at(line)}: unknown split value {cell(row, 'split')!r} in column {columns['split']!r}; "
                    "use train or val (valid, validation), or True/False for is_valid."
                )
        labels = tuple(sorted(set(split_cell(label)))) if multilabel else (label,)
        out.append((line, _inside(source, line, base, real_base, path), labels, split))
    return out, multilabel


def _label_splitter(cells: list[str], label_delim: str | None) -> Any:
    """How a label cell splits into labels: at ``label_delim`` when given; else at ``;``, ``|`` or ``,`` when a cell
    holds one, or at white space between labels that other rows carry on their own (fastai's ``"ants bees"``)."""
    if label_delim is not None:
        delim = label_delim if label_delim.strip() else None  # " ": any run of white space
        return lambda c: [t.strip() for t in c.split(delim) if t.strip()]
    singles = {c for c in cells if c and not any(ch.isspace() for ch in c)}

    def split(c: str) -> list[str]:
        for sep in _LABEL_SEPARATORS:
            if sep in c:
                return [t.strip() for t in c.split(sep) if t.strip()]
        tokens = c.split()
        return tokens if len(tokens) > 1 and sum(t in singles for t in tokens) > 1 else ([c] if c else [])

    return split


def _inside(source: _Source, line: int, base: Path, real_base: Path, path: str) -> str:
    """``path`` relative to the root, posix; a path that leaves the root (``..``, an absolute path elsewhere, a
    symbolic link to elsewhere) is refused, not followed."""
    given = Path(path)
    full = Path(os.path.normpath(given if given.is_absolute() else base / given))
    resolved = full.resolve()
    if full.is_relative_to(base) and resolved.is_relative_to(real_base):
        return full.relative_to(base).as_posix()
    how = "is" if not full.is_relative_to(base) else _through_link(base, full, resolved)
    raise DataError(
        f"{source.at(line)}: {path!r} {how} outside the data root {base}; graft reads only files under the root "
        "(refused, not followed): move the file under it, or pass --root with a folder that holds every listed file."
    )


def _through_link(base: Path, full: Path, resolved: Path) -> str:
    """How ``full``, under ``base`` by name, ends up at ``resolved``: the symbolic link on its way that leads out."""
    link = base
    for part in full.relative_to(base).parts:
        link = link / part
        if link.is_symlink() and not link.resolve().is_relative_to(base.resolve()):
            if link == full:
                return f"is a symbolic link to {resolved},"
            return (
                f"resolves to {resolved} (its folder {link.relative_to(base).as_posix()} is a symbolic link to "
                f"{link.resolve()}),"
            )
    return f"resolves to {resolved},"


def _usable_rows(
    rows: list[Row], base: Path, skipped: list[Skipped], exclude: dict[str, str] | None, unit: str = "line"
) -> list[Row]:
    """The rows worth decoding: repeated, excluded, missing and folder entries go to ``skipped``."""
    first: dict[str, int] = {}
    out: list[Row] = []
    for row in rows:
        line, rel = row[0], row[1]
        full = base / rel
        if rel in first:
            skipped.append(Skipped(rel, f"listed again on {unit} {line} ({unit} {first[rel]} is used)"))
        elif exclude and rel in exclude:
            skipped.append(Skipped(rel, f"excluded: {exclude[rel]}"))
        elif (folder := is_folder(full))[0]:
            skipped.append(Skipped(rel, "a folder, not an image file"))
        elif folder[1] is not None:
            skipped.append(Skipped(rel, folder[1]))
        elif not full.exists():
            skipped.append(Skipped(rel, "listed in the table, but there is no such file"))
        else:
            out.append(row)
        first.setdefault(rel, line)
    return out


def _drop_val_only(rows: list[Row], val_only: set[str], skipped: list[Skipped], multilabel: bool) -> list[Row]:
    """Labels no training row carries: a single-label row with one is skipped; a multi-label row keeps its other
    labels (its image is still a negative of every class)."""
    if multilabel:
        return [(line, rel, tuple(x for x in labels if x not in val_only), split) for line, rel, labels, split in rows]
    for _, rel, labels, _ in rows:
        if labels[0] in val_only:
            skipped.append(Skipped(rel, f"label {labels[0]!r} is only in val rows: no training row teaches it"))
    return [r for r in rows if r[2][0] not in val_only]


def _split(
    name: str,
    base: Path,
    classes: list[str],
    good: list[Row],
    has_split: bool,
    val_split: float,
    seed: int,
    sets: list[tuple[int, ...]] | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """The samples: the table's own split, or ``val_split`` of each class (multi-label: of each label set) held
    out; each class needs a usable training image (two without a split column and one label per image: one to
    train, one to validate), and val cannot be empty."""
    index = {c: i for i, c in enumerate(classes)}
    if sets is None:
        keys, key_of = classes, (lambda labels: labels[0])
    else:
        set_index = {s: i for i, s in enumerate(sets)}
        keys = [str(i) for i in range(len(sets))]
        key_of = lambda labels: str(set_index[tuple(index[c] for c in labels)])  # noqa: E731
    files: dict[str, dict[str, list[Path]]] = {s: {k: [] for k in keys} for s in ("train", "val", "all")}
    for _, rel, labels, split in good:
        files[split or "all"][key_of(labels)].append(base / rel)
    need = 1 if has_split or sets is not None else 2
    for c in classes:
        held = [k for k in keys if (c == k if sets is None else index[c] in sets[int(k)])]
        n = sum(len(files["train" if has_split else "all"][k]) for k in held)
        if n < need:
            what = "no usable training image" if n == 0 else "only 1 usable image"
            add = "training rows for it" if has_split else "at least 2 images (one to train, one to validate)"
            raise DataError(
                f"Label {c!r} of {name} has {what} (graft check {name} lists the skipped files). Add {add}, "
                "or remove its rows."
            )
    if not has_split:
        train, val = split_per_class(keys, files["all"], val_split, seed)
        if not val:  # multi-label: every label set has one image, and one image stays in train
            raise DataError(f"{name}: no image could be held out for val; add a split column (is_valid).")
        return train, val
    key_index = {k: i for i, k in enumerate(keys)}
    train = [Sample(p, key_index[k]) for k in keys for p in files["train"][k]]
    val = [Sample(p, key_index[k]) for k in keys for p in files["val"][k]]
    if not val:
        raise DataError(f"{name} has no usable val row: mark some rows val (is_valid True), or drop the split column.")
    return train, val
