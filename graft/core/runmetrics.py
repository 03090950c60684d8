"""``metrics.json`` as a typed record: :class:`RunMetrics`, checked field by field when it is read.

Every kind of run writes some of the fields (float, multi-label, int8 and ensemble runs; ``--auto``; a test set);
all are optional. A wrong value of a known field is one :class:`~graft.core.errors.RunError` line naming the file
and the field; keys this graft does not know are kept and written back unchanged (:meth:`RunMetrics.to_dict`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.core.errors import RunError
from graft.core.runmeta import (
    FieldProblem,
    check_bool,
    check_object,
    check_positive_int,
    check_str,
    check_str_list,
    check_task,
    field_error,
    is_number,
    read_object,
    type_name,
)

METRICS_FILE = "metrics.json"
METRICS_FIX = "the file was edited or written by another program: re-run graft train (or graft evaluate) or restore it"


def _fraction(v: Any) -> float:
    if not is_number(v) or not 0 <= v <= 1:
        raise FieldProblem(f"must be a number in [0, 1], got {json.dumps(v)[:40]}")
    return v


def _opt_fraction(v: Any) -> float | None:
    return None if v is None else _fraction(v)


def _count(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise FieldProblem(f"must be a whole number >= 0, got {json.dumps(v)[:40]}")
    return v


def _seconds(v: Any) -> float:
    if not is_number(v) or not 0 <= v < math.inf:
        raise FieldProblem(f"must be a finite number of seconds >= 0, got {json.dumps(v)[:40]}")
    return v


def _number(v: Any) -> float:
    if not is_number(v):
        raise FieldProblem(f"must be a number, got {type_name(v)}")
    return v


def _interval(v: Any) -> tuple[float, float]:
    if not isinstance(v, list | tuple) or len(v) != 2 or not all(is_number(x) and 0 <= x <= 1 for x in v):
        raise FieldProblem(f"must be [low, high], two numbers in [0, 1], got {json.dumps(v)[:40]}")
    return (v[0], v[1])


def _metric_classes(v: Any) -> tuple[str, ...]:
    return check_str_list(v, "class names")


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise FieldProblem(f"must be a list, got {type_name(v)}")
    return v


#: Every key graft writes to metrics.json (float, multi-label, int8, ensemble runs; ``--auto``; a test set).
METRIC_FIELDS: dict[str, Callable[[Any], Any]] = {
    "best_val_acc": _fraction,
    "best_val_balanced_acc": _fraction,
    "best_val_macro_f1": _fraction,
    "best_val_map": _fraction,
    "fp32_val_acc": _fraction,
    "best_val_loss": _number,
    "selected_by": check_str,
    "balance": check_str,
    "best_epoch": _count,
    "epochs_run": _count,
    "n_train": _count,
    "n_val": _count,
    "classes": _metric_classes,
    "device": check_str,
    "world_size": check_positive_int,
    "train_seconds": _seconds,
    "fit_seconds": _seconds,
    "lr_auto": check_object,
    "val_near_copies_in_train": _count,
    "test_acc": _fraction,
    "test_acc_ci95": _interval,
    "n_test": _count,
    "test_dir": check_str,
    "task": check_task,
    "val_ap": check_object,
    "thresholds": check_object,
    "val_micro_f1": _fraction,
    "val_macro_f1": _opt_fraction,
    "val_exact_match": _fraction,
    "int8": check_bool,
    "members": _list,
    "auto": check_object,
}


@dataclass(frozen=True)
class RunMetrics:
    """A run's ``metrics.json``: the best epoch's val figures and the run's facts. Every field is optional (kinds
    of run write different ones; an unfinished run has none); unknown keys are kept in ``extra``."""

    best_val_acc: float | None = None
    best_val_balanced_acc: float | None = None
    best_val_macro_f1: float | None = None
    best_val_map: float | None = None
    fp32_val_acc: float | None = None
    best_val_loss: float | None = None
    selected_by: str | None = None
    balance: str | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    classes: tuple[str, ...] | None = None
    device: str | None = None
    world_size: int | None = None
    train_seconds: float | None = None
    fit_seconds: float | None = None
    lr_auto: dict[str, Any] | None = None
    val_near_copies_in_train: int | None = None
    test_acc: float | None = None
    test_acc_ci95: tuple[float, float] | None = None
    n_test: int | None = None
    test_dir: str | None = None
    task: str | None = None
    val_ap: dict[str, Any] | None = None
    thresholds: dict[str, Any] | None = None
    val_micro_f1: float | None = None
    val_macro_f1: float | None = None
    val_exact_match: float | None = None
    int8: bool | None = None
    members: list[Any] | None = None
    auto: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_json(cls, path: str | Path) -> RunMetrics:
        path = Path(path)
        return cls.from_dict(read_object(path, fix=METRICS_FIX), source=path)

    @classmethod
    def read(cls, run_dir: Path) -> RunMetrics:
        """``run_dir/metrics.json``; an empty record when the run has none yet (or it is not JSON: the figures
        are only shown, never needed to load the run). A wrong value of a known field is still a RunError."""
        try:
            d = read_object(run_dir / METRICS_FILE, fix=METRICS_FIX)
        except RunError:
            return cls()
        return cls.from_dict(d, source=run_dir / METRICS_FILE)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: Any = METRICS_FILE) -> RunMetrics:
        if not isinstance(d, Mapping):
            raise RunError(f"{source} must hold a JSON object, got {type_name(d)}; {METRICS_FIX}")
        values: dict[str, Any] = {}
        for name, value in d.items():
            if name in METRIC_FIELDS and value is not None:
                try:
                    values[name] = METRIC_FIELDS[name](value)
                except FieldProblem as e:
                    raise field_error(source, name, str(e), fix=METRICS_FIX) from None
        extra = {k: v for k, v in d.items() if k not in METRIC_FIELDS}
        return cls(**values, extra=extra, keys=tuple(d))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``metrics.json``: the keys read, in their order, then fields set since."""
        present = [k for k in METRIC_FIELDS if getattr(self, k) is not None]
        order = [k for k in self.keys if k in METRIC_FIELDS or k in self.extra]
        order += [k for k in present if k not in order] + [k for k in self.extra if k not in order]
        out = {}
        for k in order:
            value = self.extra[k] if k in self.extra else getattr(self, k)
            out[k] = list(value) if isinstance(value, tuple) else value
        return out

    def get(self, name: str, default: Any = None) -> Any:
        """A figure by name (known field or a newer graft's key), ``default`` when the run did not record it."""
        value = getattr(self, name, None) if name in METRIC_FIELDS else self.extra.get(name)
        return default if value is None else value
