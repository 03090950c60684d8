"""Multi-label training: the loss (sigmoid outputs, binary cross-entropy with optional ``pos_weight``), what an
epoch pass counts (its mAP, in the loop's accuracy slot: the best epoch is the best val mAP), and what the
run saves at its end (per-class thresholds chosen on val, micro/macro F1 at them).

A multi-label dataset's samples carry the index of their label set (``Dataset.label_sets``), so the loaders, the
feature store and the in-memory image stores are those of single-label runs; :class:`MultiLabelLoss` turns those
indices into multi-hot targets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core import distributed as dist
from graft.core.errors import ConfigError
from graft.core.metrics import mean_average_precision, multilabel_f1, per_class_ap
from graft.inference import multilabel as ml
from graft.training.loop import Phase


class MultiLabelLoss(nn.Module):
    """``BCEWithLogitsLoss`` on the multi-hot targets of label-set indices (or on ``(B, C)`` float targets)."""

    #: (sigmoid probabilities, targets) of the last evaluation pass (:func:`multilabel_epoch`)
    outputs: tuple[np.ndarray, np.ndarray] | None = None

    def __init__(self, label_sets: list[tuple[int, ...]], n_classes: int, pos_weight: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("sets", torch.from_numpy(ml.multi_hot(label_sets, n_classes)))
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.float() if labels.dim() > 1 else self.sets[labels]

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.bce(logits, self.targets(labels))

    def tally(self, training: bool, device: torch.device) -> MultiLabelTally:
        """What :func:`graft.training.loop.run_epoch` counts with this loss."""
        return MultiLabelTally(self, training)


def make_multilabel_loss(cfg: Any, dataset: Any) -> MultiLabelLoss:
    """The loss of a multi-label run; ``--pos-weight auto`` weighs each class's positives by negatives/positives
    of the training images (capped at 100: a class with one positive must not swamp the rest)."""
    single_only = {
        "--label-smoothing": cfg.label_smoothing,
        "--balance weights": getattr(cfg, "balance", None) == "weights",
        "--mixup": getattr(cfg, "mixup", 0),
        "--cutmix": getattr(cfg, "cutmix", 0),
    }
    used = [name for name, value in single_only.items() if value]
    if used:
        raise ConfigError(f"{', '.join(used)}: for single-label runs; leave it out for a multi-label table")
    n = len(dataset.classes)
    weight = None
    if cfg.pos_weight == "auto":
        positives = ml.multi_hot([dataset.label_sets[s.label] for s in dataset.train], n).sum(axis=0)
        negatives = len(dataset.train) - positives
        weight = torch.from_numpy(np.clip(negatives / np.maximum(positives, 1), 1e-2, 100.0).astype(np.float32))
    return MultiLabelLoss(dataset.label_sets, n, weight)


class MultiLabelTally:
    """What a pass of :func:`graft.training.loop.run_epoch` counts for a multi-label run: the mean loss and the
    pass's mAP (in the accuracy slot), no confusion matrix. An evaluation pass keeps its sigmoid probabilities and
    targets in ``criterion.outputs`` (the run's thresholds are chosen on them)."""

    def __init__(self, criterion: MultiLabelLoss, training: bool) -> None:
        if dist.is_distributed():
            raise ConfigError("multi-label runs train in one process: leave out --nproc")
        self.criterion, self.training = criterion, training
        self.total, self.seen = 0.0, 0
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.total += loss.item() * labels.size(0)
        self.seen += labels.size(0)
        self.scores.append(logits.float().cpu())
        self.targets.append(self.criterion.targets(labels).cpu())

    def result(self, loader: Any) -> Phase:
        if not self.seen:
            return Phase(0.0, 0.0)
        logits, targets = torch.cat(self.scores).numpy(), torch.cat(self.targets).numpy()
        if not self.training:
            self.criterion.outputs = (ml.sigmoid(logits), targets)
        return Phase(self.total / self.seen, mean_average_precision(logits, targets))


def thresholds_and_metrics(probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """What a multi-label run saves: per-class thresholds maximizing each class's val F1 (model.json), and the
    val mAP, per-class AP and micro/macro F1 at those thresholds (metrics.json)."""
    thresholds = [round(t, 6) for t in ml.best_thresholds(probs, targets)]  # as model.json keeps them
    f1 = multilabel_f1(probs, targets, thresholds)
    aps = per_class_ap(probs, targets)
    return {
        "task": "multilabel",
        "best_val_map": mean_average_precision(probs, targets),
        "val_ap": {c: (None if a != a else round(a, 6)) for c, a in zip(classes, aps, strict=True)},
        "thresholds": dict(zip(classes, thresholds, strict=True)),
        "val_micro_f1": f1["micro_f1"],
        "val_macro_f1": f1["macro_f1"],
        "val_exact_match": f1["exact_match"],
    }
