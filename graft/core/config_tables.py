"""The options of a table DATA (a .csv/.tsv file, or a pandas DataFrame in Python), alike on every command that
takes DATA: their help texts, how a config passes them to the scan, and whether DATA is a DataFrame. No heavy
imports (``graft --help`` imports it through :mod:`graft.core.config`)."""

from __future__ import annotations

import os
from typing import Any

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
