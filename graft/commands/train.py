"""``graft train`` and :func:`graft.train`: a config to a run directory, through the pipeline it asks for (float or
int8) with the callbacks of the layers above training (curves, the end-of-run report, the model card, and the
experiment trackers of ``--log``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.core import distributed as dist
from graft.core.config import TrainConfig, from_options
from graft.core.config.fields import takes_fields
from graft.insight import tracking
from graft.insight.callbacks import Curves, Report
from graft.insight.lrplot import LrFindFigures
from graft.insight.modelcard import ModelCard
from graft.insight.testset import TestEvaluation
from graft.training.pipeline import RunResult, run_training


@takes_fields(TrainConfig, "data")
def train(data: str | Path | None = None, /, **options: Any) -> RunResult:
    """Train a classifier on an image folder and write a run directory.

    Args:
        data: dataset folder (``DATA/train/<class>``, ``DATA/val/<class>``, or ``DATA/<class>``).
        **options: any field of :class:`graft.TrainConfig` (``arch``, ``mode``, ``epochs``, ...).

    Returns:
        A :class:`graft.training.RunResult` with ``run_dir`` and the run's ``metrics``.

    Example:
        >>> run = graft.train("hymenoptera_data", arch="mobilenet_v2", mode="freeze", epochs=10)
        >>> graft.load(run.run_dir).predict("bee.jpg", top_k=2)
    """
    return run(from_options(TrainConfig, options, **({"data": data} if data is not None else {})))


def run(cfg: TrainConfig, *, log: Callable[[str], None] = print) -> RunResult:
    """Run ``cfg`` end to end (see :func:`train`): int8 runs (``--int8``, ``--mode qat``) through
    :mod:`graft.training.int8`, float runs through :mod:`graft.training.pipeline` with curves and the report."""
    if cfg.auto:  # the cross-validated search, then the winner through this very function (graft.training.auto)
        from graft.training.auto import run_auto

        return run_auto(cfg, log=log, train=lambda winner: run(winner, log=log))
    # --log's trackers are checked first (package, store), so a missing one fails before any training work; the
    # model card and the trackers come last, so that they see the report's evaluation and figures
    trackers = tracking.trackers(cfg, log)
    after = [ModelCard(log), *trackers]
    with tracking.closed_on_failure(trackers):
        if cfg.int8 or cfg.mode == "qat":
            from graft.training.int8 import run_int8_training

            dist.refuse("--int8 / --mode qat")
            return run_int8_training(cfg, log=log, callbacks=after)
        # the held-out test folder (DATA/test/) is evaluated after the best epoch is chosen, before the report
        return run_training(
            cfg,
            log=log,
            callbacks=[Curves(log), TestEvaluation(cfg.data, log), Report(log), LrFindFigures(log), *after],
        )
