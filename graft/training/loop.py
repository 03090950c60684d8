"""The training loop: :func:`fit` runs epochs of :func:`run_epoch` and keeps the best val accuracy's weights.

The loop is the tutorial's (a train and a val phase per epoch, the best val accuracy's weights kept and
restored) without its defects: a frozen backbone stays in eval mode, and by default it runs only once per
image (its features are computed once, and the head trains on them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from graft.core import distributed as dist
from graft.core.config import TrainConfig
from graft.core.device import autocast, prepare_input
from graft.core.errors import RunError
from graft.core.fast_inference import optimize_for_inference
from graft.core.metrics import balanced_accuracy, confusion_matrix, macro_f1
from graft.core.progress import progress
from graft.inference.float_classifier import body_and_head
from graft.models.model import GraftModel
from graft.training.balance import selector


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    stage: str = "train"
    val_balanced_acc: float = math.nan
    val_macro_f1: float = math.nan

    def row(self) -> list[Any]:
        return [
            self.epoch,
            f"{self.train_loss:.6f}",
            f"{self.train_acc:.6f}",
            f"{self.val_loss:.6f}",
            f"{self.val_acc:.6f}",
            f"{self.lr:.6g}",
            f"{self.seconds:.3f}",
            self.stage,
            f"{self.val_balanced_acc:.6f}",
            f"{self.val_macro_f1:.6f}",
        ]


@dataclass
class FitResult:
    """Where :func:`fit` stands: the best epoch so far (``best_score``: its value of the selection metric, val
    accuracy unless ``fit(select=...)`` says otherwise) and its weights, the epochs run, the epochs since the last
    improvement. Given back as ``fit(start=...)``, it continues the stage where it stopped (``--resume``)."""

    best_score: float
    best_epoch: int
    history: list[EpochResult] = field(default_factory=list)
    stale: int = 0
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)


# ----------------------------------------------------------------------------------------------------------------
# the loop


class Phase(NamedTuple):
    """One pass of :func:`run_epoch`: mean loss, accuracy and (evaluation only) the confusion matrix, rows true."""

    loss: float
    accuracy: float
    confusion: torch.Tensor | None = None


class Tally:
    """What a pass of :func:`run_epoch` counts, batch by batch; a loss with other outputs (the multi-label loss)
    brings its own through ``criterion.tally(training, device)``.

    This one counts class predictions: labels are class indices, or soft targets ``(B, classes)`` (MixUp/CutMix
    batches), whose predictions count as hits when they hit the dominant label."""

    def __init__(self, training: bool, device: torch.device) -> None:
        # Sums stay on the device: reading them back per batch would make a GPU wait for every batch.
        self.loss = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.training, self.seen, self.confusion = training, 0, None

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        hard = labels.argmax(1) if labels.dim() > 1 else labels
        predicted = logits.argmax(1)
        self.loss += loss * labels.size(0)
        self.correct += (predicted == hard).sum()
        self.seen += labels.size(0)
        if not self.training:  # counted on the device, summed there batch by batch
            counts = confusion_matrix(hard, predicted, logits.size(1))
            self.confusion = counts if self.confusion is None else self.confusion + counts

    def result(self, loader: Any) -> Phase:
        # under torchrun, a loader of this rank's share: the totals of all ranks (the whole data)
        loss_sum, hits, seen = dist.epoch_totals(loader, self.loss.item(), self.correct.item(), self.seen)
        confusion = None if self.confusion is None else dist.epoch_sum(loader, self.confusion.cpu())
        return Phase(loss_sum / max(seen, 1), hits / max(seen, 1), confusion)


def run_epoch(
    model: nn.Module,
    loader: Any,
    criterion: nn.Module,
    device: torch.device,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    desc: str = "",
    precision: str = "auto",
) -> Phase:
    """One pass over ``loader``: training when an optimizer is given, else evaluation (with a confusion matrix).

    ``precision``: the training steps' (a resolved ``--precision``, :func:`graft.core.device.resolve_precision`).
    Evaluation runs graft predict's numerics (fp32 on the CPU), so a bf16 run's val accuracy is what predict gets."""
    training = optimizer is not None
    model.train(training)
    if not training:  # the exact numerics of graft predict, so val accuracy is reproducible
        model = _inference_model(dist.unwrap(model), device)
    tally = criterion.tally(training, device) if hasattr(criterion, "tally") else Tally(training, device)
    with torch.set_grad_enabled(training):
        for inputs, labels in progress(loader, desc=desc):
            inputs, labels = prepare_input(inputs, device), labels.to(device)
            with autocast(device, precision if training else "auto"):
                logits = model(inputs)
            loss = criterion(logits.float(), labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            tally.add(loss.detach(), logits.detach(), labels)
    return tally.result(loader)


def _inference_model(model: nn.Module, device: torch.device) -> nn.Module:
    """What :class:`graft.inference.FloatClassifier` runs (:func:`graft.inference.float_classifier.body_and_head`);
    a model with no body/head parts (a QAT graph) BatchNorm-folded as a whole."""
    if isinstance(model, GraftModel):
        return body_and_head(model, device)
    return optimize_for_inference(model)


def fit(
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    criterion: nn.Module,
    epochs: int,
    device: torch.device,
    patience: int | None = None,
    on_epoch: Callable[[EpochResult, bool, FitResult], None] | None = None,
    best_score: float = -1.0,
    first_epoch: int = 1,
    stage: str = "train",
    start: FitResult | None = None,
    select: Callable[[EpochResult], float] | None = None,
    val_criterion: nn.Module | None = None,
    precision: str = "auto",
) -> FitResult:
    """Train for ``epochs`` (or until ``patience`` epochs pass without a better one), keep the weights of the best
    epoch by ``select`` (val accuracy by default; ``--select-by``) and load them back into ``model`` at the end.

    ``best_score`` and ``first_epoch`` continue an earlier stage: an epoch counts as best only when it beats
    that stage, and if none does, the model goes back to the state it started from (that stage's best).
    ``start`` continues this stage after its ``len(start.history)`` finished epochs (model, optimizer and scheduler
    already restored). ``on_epoch(record, improved, result)`` runs after every epoch. ``val_criterion``: the val
    loss (default ``criterion``; a class-weighted training loss keeps a plain val loss). ``precision``: the
    training steps' (see :func:`run_epoch`).
    """
    result = start or FitResult(best_score=best_score, best_epoch=0)
    if result.best_state is None:
        result.best_state = _snapshot(model)
    last = first_epoch + epochs - 1
    for epoch in range(first_epoch + len(result.history), last + 1):
        if patience is not None and result.stale >= patience:
            break
        began = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        desc = f"epoch {epoch}/{last} train"
        train = run_epoch(model, train_data, criterion, device, optimizer=optimizer, desc=desc, precision=precision)
        val = run_epoch(model, val_data, val_criterion or criterion, device, desc=f"epoch {epoch}/{last} val")
        _check_finite(train.loss, epoch, lr, result)
        if scheduler is not None:
            scheduler.step()
        cm = val.confusion
        balanced, macro = (balanced_accuracy(cm), macro_f1(cm)) if cm is not None else (math.nan, math.nan)
        seconds = time.perf_counter() - began
        record = EpochResult(
            epoch, train.loss, train.accuracy, val.loss, val.accuracy, lr, seconds, stage, balanced, macro
        )
        score = (select or selector("acc"))(record)
        improved = score > result.best_score
        result.stale = 0 if improved else result.stale + 1
        if improved:
            result.best_score, result.best_epoch = score, epoch
            result.best_state = _snapshot(model)
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record, improved, result)
    model.load_state_dict(result.best_state)
    return result


def _check_finite(train_loss: float, epoch: int, lr: float, result: FitResult) -> None:
    if not math.isfinite(train_loss):
        kept = (
            f"the best model so far (epoch {result.best_epoch}) is kept"
            if result.best_epoch
            else "no better epoch than before this stage was found, so nothing new was saved"
        )
        raise RunError(f"the training loss became {train_loss} at epoch {epoch}: lower --lr (now {lr:g}); {kept}")


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s weights, on its device (a tensor clone each; ``copy.deepcopy`` of a ResNet-18 state
    dict spent 0.1 s per best epoch in Python on a GPU run of 0.15 s epochs)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return None
