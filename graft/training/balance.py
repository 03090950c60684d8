"""Accuracy levers of a training run: the loss (with ``--balance weights``), the class-balanced sampler's weights
(``--balance sampler``), and what "best epoch" means (``--select-by``: the metric, read from an epoch's record)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

#: imbalance (largest / smallest train class) from which ``--select-by auto`` selects by balanced accuracy
IMBALANCED = 3.0


def class_counts(labels: Sequence[int], n_classes: int) -> list[int]:
    """Images per class of ``labels``."""
    return torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=n_classes).tolist()


def imbalance(counts: Sequence[int]) -> float:
    """Largest over smallest class (inf when a class has no image)."""
    return max(counts) / min(counts) if min(counts) else float("inf")


def class_weights(counts: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency weights ``n / (classes * n_c)`` (sklearn's "balanced"): 1 for every class of a balanced
    set, and each class's images weigh alike in total."""
    c = torch.as_tensor(counts, dtype=torch.float32)
    return c.sum() / (len(c) * c.clamp(min=1))


def sample_weights(labels: torch.Tensor | Sequence[int], n_classes: int) -> torch.Tensor:
    """Per-sample weights of class-balanced sampling: ``1 / n_c`` of the sample's class (every class drawn alike)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(labels, minlength=n_classes).double()
    return (1.0 / counts.clamp(min=1))[labels]


def balance_used(cfg: Any, counts: Sequence[int]) -> str:
    """``--balance`` as applied: ``auto`` is ``weights`` on imbalanced train classes (>= 3x), else ``none``."""
    if cfg.balance != "auto":
        return cfg.balance
    return "weights" if imbalance(counts) >= IMBALANCED else "none"


def make_criterion(cfg: Any, counts: Sequence[int]) -> tuple[nn.Module, nn.Module | None]:
    """The (training, val) losses: cross-entropy with ``--label-smoothing``, weighted per class in training with
    ``--balance weights`` (or ``auto`` on imbalanced classes); the val loss is then the plain one (comparable
    between runs), else None (the same). Takes integer labels or soft targets (``--mixup``/``--cutmix``)."""
    plain = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if balance_used(cfg, counts) != "weights":
        return plain, None
    return nn.CrossEntropyLoss(weight=class_weights(counts), label_smoothing=cfg.label_smoothing), plain


def select_metric(cfg: Any, counts: Sequence[int]) -> str:
    """The val metric that picks the best epoch: ``--select-by``, or for ``auto`` balanced accuracy on imbalanced
    data (largest class >= 3x the smallest), else accuracy."""
    if cfg.select_by != "auto":
        return cfg.select_by
    return "balanced_acc" if imbalance(counts) >= IMBALANCED else "acc"


def selector(metric: str) -> Callable[[Any], float]:
    """``EpochResult -> score`` for a metric name of :func:`select_metric`."""
    field = {"acc": "val_acc", "balanced_acc": "val_balanced_acc", "macro_f1": "val_macro_f1"}[metric]
    return lambda record: getattr(record, field)


def describe(cfg: Any, counts: Sequence[int], metric: str, classes: Sequence[str]) -> str:
    """The log line that says what the best epoch maximizes and why, and how the classes are balanced."""
    ratio = imbalance(counts)
    big, small = max(range(len(counts)), key=counts.__getitem__), min(range(len(counts)), key=counts.__getitem__)
    shape = (
        f"largest train class {classes[big]} {counts[big]}, smallest {classes[small]} {counts[small]} ({ratio:.1f}x)"
    )
    why = "--select-by auto" if cfg.select_by == "auto" else f"--select-by {cfg.select_by}"
    line = f"best epoch by val {metric.replace('_', ' ')} ({why}; {shape})"
    used = balance_used(cfg, counts)
    if cfg.balance == "auto" and used == "weights":
        line += "; --balance auto: class-weighted loss (--balance none trains on the data as it is)"
    elif ratio >= IMBALANCED and used == "none":
        line += "; imbalanced: --balance weights or --balance sampler may help the small classes"
    return line
