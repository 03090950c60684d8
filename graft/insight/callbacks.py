"""The figures and the report of a training run, as callbacks the run calls (training does not import them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.insight import report
from graft.insight.plots import CurvesWriter
from graft.training.callbacks import Callback
from graft.training.loop import EpochResult, FitResult


class Curves(Callback):
    """curves.png, redrawn after slow epochs (see :class:`graft.insight.plots.CurvesWriter`); the report draws the
    final one."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.writer: CurvesWriter | None = None

    def on_run_start(self, run_dir: Path) -> None:
        self.writer = CurvesWriter(run_dir, log=self.log)

    def on_epoch_end(self, record: EpochResult, improved: bool, result: FitResult) -> None:
        if self.writer is not None:
            self.writer()


class Report(Callback):
    """The end of ``graft train``: evaluation, figures and report.html; a failure only warns."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        report.write_run_report(run_dir, log=self.log)
