"""The options about the data: DATA itself (a folder, a .csv/.tsv table, or a pandas DataFrame in Python), a
table's columns, the val split and its seed, batches; how a config passes them to the scan; ``graft check``'s
config. No heavy imports (``graft --help`` imports it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from graft.core.config.fields import AT_LEAST_1, FRACTION, Rule, Shared, check_fields, opt

DATA_HELP = "dataset folder (DATA/train/<class>/* + DATA/val/<class>/*, or DATA/<class>/*), or a .csv/.tsv table"
DATA_AS_TRAIN_HELP = "dataset folder or .csv/.tsv table (as for graft train)"

TABLE_HELP = {
    "path_col": "table DATA: column of image paths (default: fname, path, file, filename or image)",
    "label_col": "table DATA: column of labels, one per row (default: labels, label or class)",
    "split_col": "table DATA: column of train/val, or True/False as fastai's is_valid (default: is_valid, split or "
    "set; without one, --val-split of each class is held out)",
    "root": "table DATA: folder its paths are relative to (default: the table's folder); paths outside are refused",
    "label_delim": "table DATA: separator of several labels in one cell (e.g. ' ' or ';'): a multi-label table",
    "task": "single (one label per image), multilabel (any number, none allowed), or auto: multilabel when "
    "--label-delim is given or a cell holds several labels",
    "pos_weight": "multi-label: weight of each class's positives in the loss (auto: negatives/positives of train)",
    "threshold": "multi-label runs: one probability threshold for every class (default: the run's, chosen on val)",
}

Task = Literal["auto", "single", "multilabel"]

DATA = Shared(None, DATA_HELP, missing="no dataset folder given: pass DATA{example}", positional=True)
VAL_SPLIT = Shared(0.2, check=FRACTION)
BATCH_SIZE = Shared(32, "images per batch", AT_LEAST_1)
SEED = Shared(0, check=Rule("in 0..2**64-1", lambda v: 0 <= v < 2**64))
#: a table DATA's options
TABLE = {name: Shared({"task": "auto", "pos_weight": "none"}.get(name), help) for name, help in TABLE_HELP.items()}


def table_options(cfg: Any) -> dict[str, Any]:
    """A config's table options as :func:`graft.data.folders.scan` takes them."""
    labels = {"label_delim": getattr(cfg, "label_delim", None), "task": getattr(cfg, "task", "auto")}
    columns = {"path_col": cfg.path_col, "label_col": cfg.label_col, "split_col": cfg.split_col}
    return columns | {"table_root": cfg.root} | labels


def is_frame(data: Any) -> bool:
    """A pandas DataFrame given as DATA (:func:`graft.data.tables.is_dataframe`, without importing pandas)."""
    return hasattr(data, "columns") and hasattr(data, "itertuples") and not isinstance(data, str | os.PathLike)


def jsonable_data(out: dict[str, Any], data: Any) -> dict[str, Any]:
    """A config's JSON with a DataFrame DATA named, not stored (``data_report.json`` keeps its rows' split)."""
    return out | {"data": f"DataFrame ({len(data)} rows)"} if is_frame(data) else out


@dataclass(kw_only=True)
class CheckConfig:
    """``graft check``: scan a dataset folder and report what would be used and skipped."""

    data: Path = opt(DATA)
    val_split: float = opt(VAL_SPLIT, "val fraction when DATA has no train/val folders")
    path_col: str | None = opt(TABLE["path_col"])
    label_col: str | None = opt(TABLE["label_col"])
    split_col: str | None = opt(TABLE["split_col"])
    root: Path | None = opt(TABLE["root"])
    label_delim: str | None = opt(TABLE["label_delim"])
    task: Task = opt(TABLE["task"])
    seed: int = opt(SEED, "random seed of the split")
    json: bool = opt(False, "print the report as JSON")

    def __post_init__(self) -> None:
        check_fields(self)
        self.data = Path(self.data)
