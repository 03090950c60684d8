"""What ``graft app --data`` and ``--pool`` bring into a project: labelled images read by graft's own scanners
(class folders, the train/ val/ layout, a .csv/.tsv table), or a folder of unlabelled images. Every image is
decoded once to check it (the scan's verdict cache makes a second import of unchanged files cheap); unreadable
files are skipped and reported, never added."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graft.commands.app.records import AppError, ImportReport, check_class_name
from graft.core.errors import DataError, GraftError


@dataclass
class Found:
    """The images an import adds (with their labels and splits, None: none given), its report, and its root."""

    report: ImportReport
    root: Path
    paths: list[Path] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)

    def take(self, path: Path, label: str | None = None, split: str | None = None) -> None:
        try:
            str(path.resolve()).encode("utf-8")  # SQLite keeps text as UTF-8
        except UnicodeEncodeError:
            shown = str(path).encode("utf-8", "backslashreplace").decode()
            self.report.skipped.append((shown, "file name is not UTF-8: rename it"))
            return
        self.paths.append(path)
        self.labels.append(label)
        self.splits.append(split)


def find_data(data: Path) -> Found:
    """Labelled images of ``data``, each with its class; the split kept where the data has one (train/ val/, a
    table's split column), else left to the store's stable hash split."""
    from graft.data.folders import scan

    data = data.expanduser()
    try:
        dataset = scan(data)
    except DataError as e:
        raise AppError(f"cannot import {data}: {e}") from None
    report = dataset.report
    if report.task == "multilabel":
        raise AppError(
            f"{data} gives several labels per image; graft app labels one class per image: import a table with "
            "one label per row"
        )
    columns = report.columns or {}
    keep_split = report.layout == "train/val" or (report.layout == "table" and bool(columns.get("split")))
    root = Path(report.root)
    found = Found(ImportReport(str(data), skipped=[(s.path, s.reason) for s in report.skipped]), root)
    bad = {}
    for name in dataset.classes:
        try:
            check_class_name(name)
        except AppError as e:
            bad[name] = f"class {name!r} cannot be used: {e}"
    found.report.classes = [c for c in dataset.classes if c not in bad]
    for split, samples in (("train", dataset.train), ("val", dataset.val)):
        for sample in samples:
            label = dataset.classes[sample.label]
            if label in bad:
                found.report.skipped.append((_relative(sample.path, root), bad[label]))
            else:
                found.take(sample.path, label, split if keep_split else None)
    return found


def find_pool(folder: Path) -> Found:
    """The images under ``folder`` (walked recursively, hidden entries and links out of it passed over)."""
    from graft.data.images import SCAN_DRAFT, DecodedImages
    from graft.data.samples import ScanVerdicts, validate_files
    from graft.inference.paths import expand_paths

    folder = folder.expanduser()
    if not folder.is_dir():
        raise AppError(f"--pool {folder} is not a folder: give a folder of unlabelled images")
    base = folder.resolve()
    found = Found(ImportReport(str(folder)), base)
    try:
        files = expand_paths([base], on_skip=lambda link, why: found.report.skipped.append((str(link), why)))
    except GraftError as e:
        raise AppError(f"cannot import {folder}: {e}") from None
    reasons = validate_files(files, DecodedImages(0), ScanVerdicts(base), workers=None, draft=SCAN_DRAFT)
    for path, reason in zip(files, reasons, strict=True):
        if reason is None:
            found.take(path)
        else:
            found.report.skipped.append((_relative(path, base), reason))
    return found


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
