"""Experiment tracking (``graft train --log tensorboard,mlflow``): TensorBoard event files in the run directory and
an MLflow run, both as training callbacks.

Each tracker checks its package (and MLflow its store) when it is made, before any training work, so a missing
package is one ``error:`` line naming the extra to install. Once the run has started, a tracker that fails only
warns and stops logging: the run directory, not the tracker, is the record of the run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.core import distributed as dist
from graft.core.config import TrainConfig
from graft.core.errors import DependencyError, GraftError
from graft.training.callbacks import Callback
from graft.training.loop import EpochResult, FitResult

TENSORBOARD_DIR = "tensorboard"
MLFLOW_FILE = "mlflow.json"  # where a run directory says which MLflow run holds it (``--resume`` continues it)
#: the figures a run draws, logged as images at its end
FIGURES = ("curves.png", "confusion_matrix.png", "predictions.png", "top_losses.png")
#: the ``stage`` scalar: which part of the schedule an epoch belongs to
STAGE_CODES = {"head": 0, "all": 1, "qat": 2}
#: files of a run directory that are not artifacts (the resume state is deleted when the run ends)
NOT_ARTIFACTS = {"resume.safetensors"}


class TrackingError(GraftError):
    """An experiment tracker cannot be used as asked (its store cannot be opened or reached)."""


def epoch_scalars(r: EpochResult) -> dict[str, float]:
    """What an epoch logs, by tag: the values of its results.csv row (the val phase's balanced accuracy and macro
    F1 where it measured them)."""
    out = {
        "train/loss": r.train_loss,
        "train/acc": r.train_acc,
        "val/loss": r.val_loss,
        "val/acc": r.val_acc,
        "lr": r.lr,
        "stage": float(STAGE_CODES.get(r.stage, -1)),
        "epoch_seconds": r.seconds,
    }
    for name in ("balanced_acc", "macro_f1"):
        value = getattr(r, f"val_{name}", math.nan)
        if _is_number(value) and math.isfinite(value):
            out[f"val/{name}"] = float(value)
    return out


def final_metrics(run_dir: Path, metrics: dict[str, Any]) -> dict[str, float]:
    """The run's numbers at its end: metrics.json's, the val evaluation's (``eval_*``) and an int8 run's
    comparison (``quantization.json``), numbers only."""
    out = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    ev = atomic.read_json_or(run_dir / "evaluation.json") or {}
    if ev.get("source") == "val split":
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            if _is_number(ev.get(key)):
                out[f"eval_{key}"] = float(ev[key])
        if isinstance(ev.get("accuracy_ci95"), list) and len(ev["accuracy_ci95"]) == 2:
            out["eval_accuracy_ci95_low"], out["eval_accuracy_ci95_high"] = map(float, ev["accuracy_ci95"])
    quant = atomic.read_json_or(run_dir / "quantization.json") or {}
    out |= {k: float(v) for k, v in quant.items() if _is_number(v) and k not in out}
    return out


def hyperparameters(config: dict[str, Any]) -> dict[str, str | float | int | bool]:
    """The resolved config as flat scalars (lists joined by commas, None as ``"none"``)."""
    out: dict[str, str | float | int | bool] = {}
    for key, value in config.items():
        if isinstance(value, bool | int | float | str):
            out[key] = value
        elif value is None:
            out[key] = "none"
        elif isinstance(value, list | tuple):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = json.dumps(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def guarded(hook: Callable[..., None]) -> Callable[..., None]:
    """A tracker's hook: skipped once the tracker has failed; a failure warns and stops the tracker."""

    @functools.wraps(hook)
    def run(self: Tracker, *args: Any, **kw: Any) -> None:
        if self.active:
            try:
                hook(self, *args, **kw)
            except Exception as e:
                self.failed(e)

    return run


class Tracker(Callback):
    """A callback that logs elsewhere: after a failure it warns once and stops (training goes on)."""

    name = "tracker"

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log, self.active = log, True

    def failed(self, e: Exception) -> None:
        """Stop logging after ``e`` (once), with a warning."""
        self.abort("FAILED")
        self.active = False
        self.log(f"warning: {self.name} logging stopped ({type(e).__name__}: {e}); the run directory is complete")

    def abort(self, status: str) -> None:
        """The run failed (``FAILED``) or was interrupted (``KILLED``) while this tracker was open."""


class TensorBoard(Tracker):
    """Event files in ``RUN/tensorboard``: the epoch scalars, the config as text, and at the end the figures as
    images and the hyperparameters with the final metrics (the HPARAMS tab)."""

    name = "tensorboard"

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(log)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DependencyError(
                "--log tensorboard needs the tensorboard package: pip install 'graft[tensorboard]' "
                "(or pip install tensorboard)"
            ) from None
        self._writer_class, self.writer, self.run_dir = SummaryWriter, None, Path()

    @guarded
    def on_run_start(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.writer = self._writer_class(log_dir=str(run_dir / TENSORBOARD_DIR), flush_secs=10)
        config = atomic.read_json_or(run_dir / "config.json") or {}
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    @guarded
    def on_epoch_end(self, record: EpochResult, improved: bool, result: FitResult) -> None:
        for tag, value in epoch_scalars(record).items():
            self.writer.add_scalar(tag, value, record.epoch)

    @guarded
    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        step = int(metrics.get("epochs_run", 0))
        for name in FIGURES:
            if (run_dir / name).is_file():
                self.writer.add_image(Path(name).stem, _rgb(run_dir / name), step, dataformats="HWC")
        self._hparams(run_dir, metrics, step)
        self.writer.close()
        self.active = False  # closed
        self.log(f"tensorboard: {run_dir / TENSORBOARD_DIR} (view: tensorboard --logdir {run_dir.parent})")

    def _hparams(self, run_dir: Path, metrics: dict[str, Any], step: int) -> None:
        """The config and the final metrics as one hparams session in this run's own event file (add_hparams
        would write a second run folder)."""
        from torch.utils.tensorboard.summary import hparams

        config = hyperparameters(atomic.read_json_or(run_dir / "config.json") or {})
        final = {f"final/{k}": v for k, v in final_metrics(run_dir, metrics).items()}
        experiment, start, end = hparams(config, final)
        for summary in (experiment, start, end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)

    def abort(self, status: str) -> None:
        if self.writer is not None and self.active:
            with contextlib.suppress(Exception):
                self.writer.close()


def _rgb(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two letters at least: C:\ is a folder


def resolve_mlflow_store(uri: str | None) -> tuple[str, str | None]:
    """(tracking URI, artifact location of new experiments or None for MLflow's default) of ``--mlflow-uri``.

    A URI is used as it is. A folder gets a SQLite store (``mlflow.db``) and the artifacts (``artifacts/``):
    MLflow 3 refuses its plain file store (``./mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE=true``, and names
    SQLite as its local default. None: ``$MLFLOW_TRACKING_URI``, else MLflow's own default
    (``sqlite:///mlflow.db`` in the current folder, artifacts in ``./mlruns``)."""
    if uri is None:
        import mlflow

        return mlflow.get_tracking_uri(), None
    if _SCHEME.match(uri) or uri == "databricks":
        return uri, None
    folder = Path(uri).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


class MLflow(Tracker):
    """An MLflow run: the resolved config as params, the epoch scalars as metrics (step = epoch), the final
    metrics, and the run directory as artifacts. ``RUN/mlflow.json`` names the run; ``--resume`` continues it."""

    name = "mlflow"

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None]) -> None:
        super().__init__(log)
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise DependencyError(
                "--log mlflow needs the mlflow package: pip install 'graft[mlflow]' (or pip install mlflow)"
            ) from None
        self.uri, artifacts = resolve_mlflow_store(cfg.mlflow_uri)
        self.experiment = cfg.mlflow_experiment or Path(cfg.data).resolve().name or "graft"
        self.resume, self.run_id = cfg.resume, ""
        # MLflow announces the creation of a SQLite store's tables at INFO: not graft's news
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        try:  # opened now, before any training: a store that cannot be used is an error, not a late warning
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(self.experiment)
            self.experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(self.experiment, artifact_location=artifacts)
            )
        except Exception as e:
            raise TrackingError(
                f"--log mlflow: cannot use the tracking store {self.uri} ({type(e).__name__}: {e}); "
                "give another with --mlflow-uri (a folder, sqlite:///PATH.db or http://HOST:PORT)"
            ) from None

    @guarded
    def on_run_start(self, run_dir: Path) -> None:
        saved = atomic.read_json_or(run_dir / MLFLOW_FILE) if self.resume else None
        if saved and saved.get("tracking_uri") == self.uri:  # the run this one continues
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        from mlflow.entities import Param

        tags = {"graft.run_dir": str(run_dir.resolve()), "graft.arch": _config(run_dir).get("arch", "")}
        run = self.client.create_run(self.experiment_id, run_name=run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        record = {"tracking_uri": self.uri, "experiment": self.experiment, "run_id": self.run_id}
        atomic.atomic_write_json(run_dir / MLFLOW_FILE, record | {"experiment_id": self.experiment_id})
        params = [Param(k, str(v)) for k, v in hyperparameters(_config(run_dir)).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    @guarded
    def on_epoch_end(self, record: EpochResult, improved: bool, result: FitResult) -> None:
        self._metrics(epoch_scalars(record), step=record.epoch)

    @guarded
    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        self._metrics(final_metrics(run_dir, metrics), step=int(metrics.get("epochs_run", 0)))
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
            if path.name in NOT_ARTIFACTS or path.name.endswith(".tmp"):
                continue
            parent = path.parent.relative_to(run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.active = False  # ended
        self.log(f"mlflow: run {self.run_id} in experiment {self.experiment!r} at {self.uri}")

    def _metrics(self, values: dict[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def abort(self, status: str) -> None:
        if self.run_id and self.active:
            with contextlib.suppress(Exception):
                self.client.set_terminated(self.run_id, status)


def _config(run_dir: Path) -> dict[str, Any]:
    return atomic.read_json_or(run_dir / "config.json") or {}


def trackers(cfg: TrainConfig, log: Callable[[str], None] = print) -> list[Tracker]:
    """The trackers ``cfg.log`` asks for, each checked now (package, store): call before training starts. Under
    torchrun only rank 0 has them (it alone calls callbacks; other ranks creating the experiment would race)."""
    if not dist.is_main():
        return []
    made: dict[str, Callable[[], Tracker]] = {
        "tensorboard": lambda: TensorBoard(log),
        "mlflow": lambda: MLflow(cfg, log),
    }
    return [made[name]() for name in cfg.log]


@contextlib.contextmanager
def closed_on_failure(listeners: list[Tracker]) -> Iterator[None]:
    """A run that raises ends its trackers' runs as failed (interrupted: killed) instead of leaving them open."""
    try:
        yield
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        for t in listeners:
            t.abort(status)
        raise
