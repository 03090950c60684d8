"""Training: the loop (:mod:`~graft.training.loop`), what stages train on (:mod:`~graft.training.stage_inputs`),
resume state, callbacks, and the pipelines from a config to a run directory (float: :mod:`~graft.training.pipeline`;
int8: :mod:`~graft.training.int8`). ``graft.train`` (the top-level function) picks the pipeline and attaches the
callbacks of the layers above. Internal modules import the submodules; this package re-exports the public names."""

from graft.training.callbacks import Callback
from graft.training.loop import EpochResult, FitResult, fit, make_optimizer, make_scheduler, run_epoch
from graft.training.pipeline import RunResult, run_training

__all__ = [
    "Callback",
    "EpochResult",
    "FitResult",
    "RunResult",
    "fit",
    "make_optimizer",
    "make_scheduler",
    "run_epoch",
    "run_training",
]
