"""A float training run from a config to a run directory: the data, the model, the stages, the loop, the files.

``run_training`` runs the stages of ``TrainConfig.stages()`` (head stages on stored features, image stages on
images) through :func:`graft.training.loop.fit` and tells its callbacks what happens; what reacts (results.csv,
checkpoints and resume state here; curves and the report from :mod:`graft.insight.callbacks`) is attached by the
caller. int8 runs are another pipeline (:mod:`graft.training.int8`); :func:`graft.train` chooses between them.
:func:`lr_find` (``graft lr-find``) sets up the same run and range-tests its stages instead of training them.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.core import atomic, rundir
from graft.core import distributed as dist
from graft.core.config import LrFindConfig, TrainConfig, from_options, table_options
from graft.core.config.fields import takes_fields
from graft.core.device import one_thread, pick_device, resolve_precision, seed_everything, tune_convolutions
from graft.core.errors import ConfigError, ResourceError
from graft.core.heads import HeadSpec
from graft.data.datasets import available_memory
from graft.data.folders import read_exclude_list, scan
from graft.features.store import body_key
from graft.inference.multilabel import DEFAULT_THRESHOLD
from graft.models.backbones import get_backbone
from graft.models.model import build_model, choose_weights, run_preprocess
from graft.training.balance import balance_used, class_counts, describe, make_criterion, select_metric, selector
from graft.training.callbacks import Callback, Callbacks, Checkpointer, ResultsLog
from graft.training.loop import EpochResult, fit, make_optimizer, make_scheduler, run_epoch
from graft.training.lrfind import RangeTest, stage_lr, stage_range_test
from graft.training.multilabel import make_multilabel_loss, thresholds_and_metrics
from graft.training.resume import ProgressSaver, check_resumable, load_progress
from graft.training.stage_inputs import StageData


@dataclass
class RunResult:
    """What ``graft.train`` returns: where the run is and how it went."""

    run_dir: Path
    metrics: dict[str, Any]

    @property
    def best_val_acc(self) -> float:
        return float(self.metrics["best_val_acc"])

    def _repr_html_(self) -> str:
        """Jupyter: the run's summary table, curves and confusion matrix (read from its files)."""
        from graft.core.notebook import run_html

        return run_html(self.run_dir, self.metrics, title="graft run")

    @property
    def best_val_map(self) -> float:
        """A multi-label run's best val mAP (its best epoch's)."""
        return float(self.metrics["best_val_map"])


@dataclass
class RunSetup:
    """What every training pipeline starts from: the backbone, its preprocessing, the scanned data, the model."""

    spec: Any
    preprocess: Any
    dataset: Any
    model: Any
    weights: Any
    pretrained: Any
    generator: torch.Generator

    def meta(self, cfg: TrainConfig) -> dict[str, Any]:
        meta = rundir.model_meta(cfg, self.spec, self.weights, self.pretrained, self.preprocess, self.dataset.classes)
        if self.dataset.label_sets is not None:  # sigmoid outputs; the thresholds are chosen on val at the end
            meta |= {"task": "multilabel", "thresholds": [DEFAULT_THRESHOLD] * len(self.dataset.classes)}
        return meta

    def cache_key(self, meta: dict[str, Any], device: str) -> dict[str, Any] | None:
        """Which body the stored features come from (None: random weights, nothing stored)."""
        return body_key(self.spec.name, meta["arch_kwargs"], self.pretrained.sha256, device)

    def announce(self, log: Callable[[str], None], run_dir: Path, cfg: TrainConfig, how: str, device: Any) -> None:
        ds, pretrained = self.dataset, self.pretrained
        size = f", {self.preprocess.input_size}x{self.preprocess.input_size} px" if cfg.image_size else ""
        log(
            f"run {run_dir}: {cfg.arch} ({pretrained.tag or pretrained.source}){size}, {how}, "
            f"{len(ds.train)} train / {len(ds.val)} val images, {len(ds.classes)} classes, {device}"
        )


def set_up(cfg: TrainConfig) -> RunSetup:
    """Seed, resolve the backbone and its weights, scan the data, build the model."""
    generator = seed_everything(cfg.seed)
    spec = get_backbone(cfg.arch)
    preprocess = run_preprocess(spec, choose_weights(spec, cfg.pretrained), cfg.image_size)
    # The scan decodes every image to validate it; up to 1 GiB of them is kept for the first pass over the
    # data (features or the in-memory image store), so that a run decodes each image once.
    keep = min(1 << 30, int(available_memory() * 0.1))
    exclude = read_exclude_list(cfg.exclude) if cfg.exclude else None
    dataset = scan(
        cfg.data,
        val_split=cfg.val_split,
        seed=cfg.seed,
        draft=preprocess.resize_size,
        keep_decoded=keep,
        exclude=exclude,
        **table_options(cfg),
    )
    model, weights, pretrained = build_model(
        spec, len(dataset.classes), head=HeadSpec(cfg.hidden, cfg.dropout), pretrained=cfg.pretrained
    )
    return RunSetup(spec, preprocess, dataset, model, weights, pretrained, generator)


def run_training(cfg: TrainConfig, *, log: Callable[[str], None] = print, callbacks: list[Callback] = ()) -> RunResult:
    """Train ``cfg`` (a float run) end to end; ``callbacks`` listen after graft's own (results log, checkpoints)."""
    if cfg.int8 or cfg.mode == "qat":
        raise ConfigError(
            "run_training trains float runs; --int8 and --mode qat runs go through graft.train "
            "(or graft.training.int8.run_int8_training)"
        )
    started = time.perf_counter()
    changed = check_resumable(cfg) if cfg.resume else []  # before any work: same options as the first time
    # under torchrun: join the process group; this rank's GPU
    device = dist.setup(pick_device(cfg.device), nproc=cfg.nproc)
    precision = resolve_precision(cfg.precision, device)  # before any work: bf16 asked where it is emulated fails
    if not dist.is_main():
        log = _silent  # rank 0 speaks for all
    setup = set_up(cfg)
    run_dir = cfg.resume or dist.on_main(lambda: rundir.make_run_dir(cfg))  # rank 0 picks the name for all
    if cfg.resume:
        rundir.check_same_split(run_dir, setup.dataset)
    setup.announce(log, run_dir, cfg, cfg.mode, device)
    log(f"precision {precision.name} ({precision.reason})")
    levers = _levers(cfg, setup.dataset, log)
    if setup.dataset.report.skipped:
        log(f"skipped {len(setup.dataset.report.skipped)} file(s), see {run_dir / rundir.DATA_REPORT}")
    if dist.is_main():  # only rank 0 writes the run directory
        rundir.write_start(run_dir, cfg, setup.dataset, precision.to_dict())
    meta = setup.meta(cfg)
    model = setup.model.to(device)
    key = setup.cache_key(meta, device.type)
    data = StageData(
        cfg, model, setup.dataset, setup.preprocess, device, setup.generator, key, log, precision=precision.name
    )
    lr_auto: dict[str, float] = {}  # --lr auto: each stage's rate, from a range test at its start
    data.find_lr = functools.partial(stage_lr, cfg, run_dir, found=lr_auto, log=log)
    saver = ProgressSaver(run_dir, model, setup.generator, device)
    progress = load_progress(run_dir) if cfg.resume else None  # the last finished epoch of a killed run
    if cfg.resume:
        done = f"after epoch {len(progress.history)}" if progress else "from the start (no epoch had finished)"
        log(f"resuming {run_dir} {done}" + (f"; changed: {', '.join(changed)}" if changed else ""))
    elif dist.is_main():
        saver.discard()  # a reused --name must not resume someone else's state
    checkpoints = Checkpointer(model, meta, saver, cfg.checkpoint_budget)
    rows = [r.row() for r in progress.history] if progress else []
    results = ResultsLog(log, rows, multilabel=setup.dataset.label_sets is not None)
    listeners = Callbacks([results, checkpoints, *callbacks] if dist.is_main() else [])
    listeners.on_run_start(run_dir)
    fit_start = time.perf_counter()
    with _memory_advice(cfg, device, run_dir):  # CUDA out of memory -> a batch size to try
        _, best_epoch, history = _run_stages(cfg, model, data, device, progress, saver, listeners, levers)
    fit_seconds = time.perf_counter() - fit_start
    if dist.is_main():
        checkpoints.finish(best_epoch)
    multilabel = _multilabel_end(cfg, model, data, device, meta, run_dir) if setup.dataset.label_sets else {}
    best = history[best_epoch - 1]
    metrics = _metrics(history, best_epoch, levers, setup.dataset, device) | {
        "train_seconds": round(time.perf_counter() - started, 3),
        "fit_seconds": round(fit_seconds, 3),
    }
    if multilabel:  # the loop's accuracy slot held the val mAP; no confusion matrix, no balanced accuracy
        for key in ("best_val_acc", "best_val_balanced_acc", "best_val_macro_f1"):
            metrics.pop(key, None)
        metrics |= multilabel | {"selected_by": "map"}
    if lr_auto:
        metrics["lr_auto"] = lr_auto
    if data.leakage is not None:  # val images with a near-copy in train (computed where features were)
        metrics["val_near_copies_in_train"] = len(data.leakage)
        if dist.is_main():
            rundir.write_data_report(run_dir, setup.dataset, val_near_copies_in_train=data.leakage)
    if not dist.is_main():
        return RunResult(run_dir=run_dir, metrics=metrics)  # rank 0 writes the metrics and the report
    atomic.atomic_write_json(run_dir / "metrics.json", metrics)
    score = f"acc {best.val_acc:.4f}"  # a multi-label run's accuracy slot holds its mAP
    score = f"mAP {best.val_acc:.4f} (micro F1 {multilabel['val_micro_f1']:.4f})" if multilabel else score
    log(f"best val {score} at epoch {best_epoch}; {metrics['train_seconds']:.1f}s in all; run saved to {run_dir}")
    listeners.on_run_end(run_dir, metrics)
    saver.discard()  # the run is complete: nothing to resume
    return RunResult(run_dir=run_dir, metrics=metrics)


def _run_stages(
    cfg: TrainConfig,
    model: nn.Module,
    data: StageData,
    device: torch.device,
    progress: Any,
    saver: ProgressSaver,
    listeners: Callback,
    levers: dict[str, str],
) -> tuple[float, int, list[EpochResult]]:
    """Every stage of ``cfg.stages()`` in turn (those a resumed run finished are skipped); returns the best
    epoch's score (val ``levers["selected_by"]``), the epoch and the history of all epochs."""
    best_acc, best_epoch, history = (-1.0, 0, []) if progress is None else progress.before_stage
    criterion, val_criterion = make_criterion(
        cfg, class_counts([sample.label for sample in data.dataset.train], len(data.dataset.classes))
    )
    if data.dataset.label_sets is not None:  # sigmoid outputs (graft.training.multilabel)
        criterion = val_criterion = make_multilabel_loss(cfg, data.dataset).to(device)
    for index, (stage, epochs, lr) in enumerate(cfg.stages()):
        if progress and index < progress.stage_index:
            continue  # finished before the crash; its epochs are in history
        on_features = stage == "head" and (cfg.cache_features or cfg.mode == "finetune")
        if stage == "head":
            model.freeze()
        else:
            model.unfreeze()
        target, train_data, val_data = (model.head, *data.features()) if on_features else (model, *data.images())
        precision = data.step_precision(on_features)
        if lr == "auto":  # a range test on this stage's training data (graft.training.lrfind), weights restored
            lr = data.find_lr(stage, target, train_data, criterion, device, data.generator, on_features=on_features,
                              precision=precision)  # fmt: skip
        if not on_features:
            tune_convolutions(device, steps=epochs * len(train_data))
        if cfg.compile and not on_features:
            target = torch.compile(target)  # the unwrapped model is what gets saved
        if not on_features:  # under torchrun: DDP (a head on stored features trains on every rank alike)
            target = dist.wrap(target, device)
        optimizer = make_optimizer(cfg, [p for p in target.parameters() if p.requires_grad], lr)
        scheduler = make_scheduler(cfg, optimizer, epochs)
        start = None
        if progress and index == progress.stage_index:
            start = progress.restore(model, optimizer, scheduler, data.generator)
        listeners.on_stage_start(
            index, best=(best_acc, best_epoch), earlier=history, optimizer=optimizer, scheduler=scheduler
        )
        with one_thread() if on_features else contextlib.nullcontext():
            result = fit(
                target,
                train_data,
                val_data,
                optimizer=optimizer,
                scheduler=scheduler,
                criterion=criterion,
                epochs=epochs,
                device=device,
                on_epoch=listeners.on_epoch_end,
                patience=cfg.patience or (5 if on_features else None),
                best_score=best_acc,
                first_epoch=len(history) + 1,
                stage=stage,
                start=start,
                select=selector(levers["selected_by"]),
                val_criterion=val_criterion,
                precision=precision,
            )
        history = history + result.history
        if result.best_epoch:
            best_acc, best_epoch = result.best_score, result.best_epoch
        best_acc, best_epoch = dist.broadcast_object((best_acc, best_epoch))  # ranks decide alike from here
    return best_acc, best_epoch, history


def _multilabel_end(
    cfg: TrainConfig, model: nn.Module, data: StageData, device: torch.device, meta: dict[str, Any], run_dir: Path
) -> dict[str, Any]:
    """A multi-label run's end: per-class thresholds chosen on the best model's val probabilities, saved in
    model.json (the weights file is written again with them); returns the val mAP, AP and F1 for metrics.json."""
    on_features = cfg.mode == "freeze" and cfg.cache_features
    target, loader = (model.head, data.features()[1]) if on_features else (model, data.images()[1])
    criterion = make_multilabel_loss(cfg, data.dataset).to(device)
    run_epoch(target, loader, criterion, device)  # training's val pass, through the predict path
    found = thresholds_and_metrics(*criterion.outputs, data.dataset.classes)
    meta["thresholds"] = list(found["thresholds"].values())
    if dist.is_main():
        rundir.save_model(run_dir, model, meta)
    return found


def _metrics(
    history: list[EpochResult], best_epoch: int, levers: dict[str, str], dataset: Any, device: Any
) -> dict[str, Any]:
    """metrics.json's figures of the best epoch (chosen by val ``levers["selected_by"]``; ``levers["balance"]``
    as applied) and of the data (times added after)."""
    best = history[best_epoch - 1]
    return {
        "best_val_acc": best.val_acc,
        "best_val_balanced_acc": best.val_balanced_acc,
        "best_val_macro_f1": best.val_macro_f1,
        **levers,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "best_val_loss": best.val_loss,
        "n_train": len(dataset.train),
        "n_val": len(dataset.val),
        "classes": dataset.classes,
        "device": str(device),
    } | ({"world_size": dist.world_size()} if dist.is_distributed() else {})


def _levers(cfg: TrainConfig, dataset: Any, log: Callable[[str], None]) -> dict[str, str]:
    """What the best epoch maximizes on val (``--select-by``) and the class balance applied (``--balance``), both
    ``auto`` decided from the train classes; said in the log."""
    counts = class_counts([sample.label for sample in dataset.train], len(dataset.classes))
    if getattr(dataset, "label_sets", None) is not None:  # a multi-label run's accuracy slot holds its val mAP
        return {"selected_by": "acc", "balance": cfg.balance}
    metric = select_metric(cfg, counts)
    log(describe(cfg, counts, metric, dataset.classes))
    return {"selected_by": metric, "balance": balance_used(cfg, counts)}


def _silent(line: str) -> None:
    """The log of ranks other than 0."""


@contextlib.contextmanager
def _memory_advice(cfg: TrainConfig, device: torch.device, run_dir: Path) -> Iterator[None]:
    """Turn an out-of-memory error of the accelerator into advice: a smaller batch size."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        smaller = max(1, cfg.batch_size // 2)
        raise ResourceError(
            f"out of {device.type.upper()} memory with --batch-size {cfg.batch_size} ({str(e).splitlines()[0]}). "
            f"Try --batch-size {smaller}"
            + (" or --mode freeze" if cfg.mode == "finetune" else "")
            + f"; the best model so far is kept in {run_dir}, and adding --resume {run_dir} --batch-size {smaller} "
            "continues from the last finished epoch."
        ) from None


@takes_fields(LrFindConfig, "data")
def lr_find(
    data: str | Path | None = None,
    /,
    *,
    draw: Callable[[RangeTest, Path], Any] | None = None,
    **options: Any,
) -> list[RangeTest]:
    """``graft lr-find``: the range test (:mod:`graft.training.lrfind`) of every stage that ``graft.train(data,
    **options)`` would train: head stages on the stored features, the all-layers stage of ``--mode finetune`` on
    images (a copy of the weights: the model is left as it was). ``options``: the fields of
    :class:`graft.core.config.LrFindConfig` (those of :class:`graft.core.config.TrainConfig`, the range and
    ``plot_dir``). Writes ``lr_find.csv`` (and, with ``draw``, ``lr_find.png``, e.g.
    :func:`graft.insight.lrplot.plot_lr_find`) into ``plot_dir``, or ``lr_find-<stage>.*`` when there are two
    stages. Progress lines are printed. Returns the tests, in stage order."""
    cfg = from_options(LrFindConfig, options, **({"data": data} if data is not None else {}))
    return run_lr_find(cfg, draw=draw)


def run_lr_find(
    cfg: LrFindConfig, *, log: Callable[[str], None] = print, draw: Callable[[RangeTest, Path], Any] | None = None
) -> list[RangeTest]:
    """:func:`lr_find` with an :class:`LrFindConfig` (checked when it was made)."""
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device).name
    setup = set_up(cfg)
    model = setup.model.to(device)
    key = setup.cache_key(setup.meta(cfg), device.type)
    data = StageData(
        cfg, model, setup.dataset, setup.preprocess, device, setup.generator, key, log, check_leakage=False,
        precision=precision,
    )  # fmt: skip
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    stages = [stage for stage, _, _ in cfg.stages()]
    cfg.plot_dir.mkdir(parents=True, exist_ok=True)
    tests = []
    for stage in stages:
        on_features = stage == "head" and (cfg.cache_features or cfg.mode == "finetune")
        if stage == "head":
            model.freeze()
        else:
            model.unfreeze()
        target, loader = (model.head, data.features()[0]) if on_features else (model, data.images()[0])
        test = stage_range_test(cfg, target, loader, criterion, device, stage=stage, on_features=on_features,
                                start=cfg.start_lr, end=cfg.end_lr, iterations=cfg.iterations,
                                generator=setup.generator, precision=data.step_precision(on_features))  # fmt: skip
        stem = "lr_find" if len(stages) == 1 else f"lr_find-{stage}"
        test.write_csv(cfg.plot_dir / f"{stem}.csv")
        if draw is not None:
            test.files["png"] = draw(test, cfg.plot_dir / f"{stem}.png")
        tests.append(test)
    return tests
