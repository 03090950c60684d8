"""A project's labels as a graft table: ``path,label,split``, one row per labelled image that is not excluded,
sorted by path. The paths are relative to the folder that holds every listed image (graft tables read only files
under their root), so training on it is ``graft train labels.csv --root ROOT``; the app's own training writes
PROJECT/work/labels.csv with this same function and runs that same command."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from graft.commands.app.store import AppError, Store
from graft.core.atomic import write_csv


@dataclass(frozen=True)
class Export:
    path: Path  # the CSV written
    root: Path  # the folder its paths are relative to
    rows: int
    classes: list[str]  # the classes with a row, in the project's order

    def train_args(self) -> list[str]:
        """The arguments of ``graft`` that train on it (``--root`` left out when it is the table's folder)."""
        same = self.root == self.path.resolve().parent
        return ["train", str(self.path), *([] if same else ["--root", str(self.root)])]

    @property
    def command(self) -> str:
        return shlex.join(["graft", *self.train_args()])

    def format(self) -> str:
        written = f"wrote {self.rows} labels of {len(self.classes)} classes to {self.path}"
        return f"{written}; train on them with: {self.command}"


def export_labels(store: Store, out: Path) -> Export:
    """Write ``store``'s labels to ``out`` (atomically; its folder created) and say what was written."""
    rows = sorted(store.labelled(), key=lambda r: r.path.as_posix())
    if not rows:
        raise AppError(f"{store.project} has no labelled image to export: label some images first (graft app)")
    root = Path(os.path.commonpath([str(r.path.parent) for r in rows]))
    table = [[r.path.relative_to(root).as_posix(), r.label, r.split] for r in rows]
    out = Path(out).expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AppError(f"cannot create the folder of {out}: {e.strerror}; pick another path") from None
    write_csv(out, ["path", "label", "split"], table)
    used = {r.label for r in rows}
    return Export(out, root, len(rows), [c for c in store.class_names() if c in used])
