"""Multi-label training: the loss (sigmoid outputs, binary cross-entropy with optional ``pos_weight``), the epoch
pass that scores an epoch by its mAP (the loop's accuracy slot: the best epoch is the best val mAP), and what the
run saves at its end (per-class thresholds chosen on val, micro/macro F1 at them).

A multi-label dataset's samples carry the index of their label set (``Dataset.label_sets``), so the loaders, the
feature store and the in-memory image stores are those of single-label runs; :class:`MultiLabelLoss` turns those
indices into multi-hot targets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core import distributed as dist
from graft.core.errors import ConfigError
from graft.core.runtime import autocast, prepare_input, progress
from graft.inference import multilabel as ml


class MultiLabelLoss(nn.Module):
    """``BCEWithLogitsLoss`` on the multi-hot targets of label-set indices (or on ``(B, C)`` float targets)."""

    multilabel = True  # what the loop's run_epoch dispatches on
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


def multilabel_epoch(
    model: nn.Module,
    loader: Any,
    criterion: MultiLabelLoss,
    device: torch.device,
    *,
    inference: Callable[[nn.Module, torch.device], nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    desc: str = "",
) -> tuple[float, float, None]:
    """One pass of :func:`graft.training.loop.run_epoch` for a multi-label run: (mean loss, mAP of the pass, no
    confusion matrix). Training when an optimizer is given, else evaluation through ``inference(model, device)``
    (the predict path), whose sigmoid probabilities and targets are kept in ``criterion.outputs``."""
    if dist.is_distributed():
        raise ConfigError("multi-label runs train in one process: leave out --nproc")
    training = optimizer is not None
    model.train(training)
    if not training:
        model = inference(dist.unwrap(model), device)
    total, seen = 0.0, 0
    scores, targets = [], []
    with torch.set_grad_enabled(training):
        for inputs, labels in progress(loader, desc=desc):
            inputs, labels = prepare_input(inputs, device), labels.to(device)
            with autocast(device):
                logits = model(inputs)
            loss = criterion(logits.float(), labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total += loss.item() * labels.size(0)
            seen += labels.size(0)
            scores.append(logits.detach().float().cpu())
            targets.append(criterion.targets(labels).cpu())
    if not seen:
        return 0.0, 0.0, None
    logits_all, targets_all = torch.cat(scores).numpy(), torch.cat(targets).numpy()
    if not training:
        criterion.outputs = (ml.sigmoid(logits_all), targets_all)
    return total / seen, ml.mean_average_precision(logits_all, targets_all), None


def thresholds_and_metrics(probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """What a multi-label run saves: per-class thresholds maximizing each class's val F1 (model.json), and the
    val mAP, per-class AP and micro/macro F1 at those thresholds (metrics.json)."""
    thresholds = [round(t, 6) for t in ml.best_thresholds(probs, targets)]  # as model.json keeps them
    f1 = ml.f1_report(probs, targets, thresholds)
    aps = ml.per_class_ap(probs, targets)
    return {
        "task": "multilabel",
        "best_val_map": ml.mean_average_precision(probs, targets),
        "val_ap": {c: (None if a != a else round(a, 6)) for c, a in zip(classes, aps, strict=True)},
        "thresholds": dict(zip(classes, thresholds, strict=True)),
        "val_micro_f1": f1["micro_f1"],
        "val_macro_f1": f1["macro_f1"],
        "val_exact_match": f1["exact_match"],
    }
