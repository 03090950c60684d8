"""What reacts to a training run: callbacks that the run calls at its start, at each stage, after each epoch and at
its end. The loop and the pipeline emit; the results log, the checkpoints and (from higher layers) the curves and
the report listen, so training imports none of them.

Only rank 0 of a torchrun job calls callbacks (it alone writes the run directory and logs)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from graft.core import atomic, rundir
from graft.training.loop import EpochResult, FitResult
from graft.training.resume import ProgressSaver


class Callback:
    """A listener of a training run; every hook does nothing unless overridden."""

    def on_run_start(self, run_dir: Path) -> None:
        """The run directory exists, config.json and data_report.json are written."""

    def on_stage_start(
        self, index: int, *, best: tuple[float, int], earlier: list[EpochResult], optimizer: Any, scheduler: Any
    ) -> None:
        """Stage ``index`` starts (or resumes) after the ``earlier`` epochs, whose best is ``best``."""

    def on_epoch_end(self, record: EpochResult, improved: bool, result: FitResult) -> None:
        """An epoch ended; ``result`` is the stage so far (its best weights in ``result.best_state``)."""

    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        """The best model and metrics.json are saved."""


class Callbacks(Callback):
    """Several callbacks called in order as one."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_run_start(self, run_dir: Path) -> None:
        for c in self.callbacks:
            c.on_run_start(run_dir)

    def on_stage_start(self, index: int, **kw: Any) -> None:
        for c in self.callbacks:
            c.on_stage_start(index, **kw)

    def on_epoch_end(self, record: EpochResult, improved: bool, result: FitResult) -> None:
        for c in self.callbacks:
            c.on_epoch_end(record, improved, result)

    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_run_end(run_dir, metrics)


class ResultsLog(Callback):
    """results.csv (rewritten after every epoch) and the epoch's log line. ``rows``: the epochs of an earlier part
    of the run (``--resume``). A multi-label run's accuracy columns hold the mAP, and are named so."""

    def __init__(
        self, log: Callable[[str], None], rows: list[list[Any]] | None = None, *, multilabel: bool = False
    ) -> None:
        self.log, self.rows, self.run_dir = log, list(rows or []), Path()
        self.score = "mAP" if multilabel else "acc"
        renamed = {"train_acc": "train_map", "val_acc": "val_map"} if multilabel else {}
        self.header = [renamed.get(h, h) for h in rundir.RESULTS_HEADER]

    def on_run_start(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_epoch_end(self, r: EpochResult, improved: bool, result: FitResult) -> None:
        self.rows.append(r.row())
        atomic.write_csv(self.run_dir / rundir.RESULTS_FILE, self.header, self.rows)
        self.log(
            f"epoch {r.epoch:>3} {r.stage:<4} train loss {r.train_loss:.4f} {self.score} {r.train_acc:.4f}  "
            f"val loss {r.val_loss:.4f} {self.score} {r.val_acc:.4f}  lr {r.lr:.2e}  {r.seconds:5.1f}s"
            + ("  *best" if improved else "")
        )


class Checkpointer(Callback):
    """After an epoch: the best model so far (model.safetensors) when it changed, then the resume state (the commit
    point of the epoch: ``--resume`` goes on from the last one written). Paced by ``--checkpoint-budget``."""

    def __init__(self, model: nn.Module, meta: dict[str, Any], saver: ProgressSaver, budget: float) -> None:
        self.model, self.meta, self.saver, self.pacer = model, meta, saver, Pacer(budget)
        self.saved_epoch = 0  # the epoch whose weights model.safetensors holds (0: none saved by this process)
        self.run_dir = saver.path.parent

    def on_stage_start(self, index: int, **kw: Any) -> None:
        self.saver.stage(index, **kw)

    def on_epoch_end(self, record: EpochResult, improved: bool, result: FitResult) -> None:
        if not self.pacer.due():  # after every epoch, unless epochs are much faster than saving (see Pacer)
            return
        with self.pacer.timed():
            if result.best_epoch > self.saved_epoch:  # a crash later loses at most the epochs after the best one
                rundir.save_model(self.run_dir, self.model, self.meta, best=None if improved else result.best_state)
                self.saved_epoch = result.best_epoch
            self.saver.save(result)  # last: the epoch is done once this is written

    def finish(self, best_epoch: int) -> None:
        """The final model file, unless it already holds the best epoch's weights."""
        if not best_epoch or self.saved_epoch != best_epoch:
            rundir.save_model(self.run_dir, self.model, self.meta)


class Pacer:
    """When to checkpoint: after every epoch, unless that would take more than ``budget`` of the training time.

    A ResNet-18 fine-tune on a GPU runs an epoch of hymenoptera in 0.15 s and writes its checkpoint (the model, the
    best model and the optimizer, with fsync) in ~0.5 s: saving after every epoch would make training 4x slower.
    Checkpoints are then spaced so that the time since the last one is at least ``cost / budget``; a crash loses at
    most that much work (a few seconds), and slower epochs (any CPU fine-tune) are still saved every time.
    """

    def __init__(self, budget: float) -> None:
        self.budget, self.cost, self.last = budget, 0.0, time.perf_counter()

    def due(self) -> bool:
        return self.budget >= 1 or time.perf_counter() - self.last >= self.cost / self.budget

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.last = time.perf_counter()
        self.cost = self.last - start
