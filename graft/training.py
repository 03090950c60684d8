"""Training: ``graft.train`` from a dataset folder to a run directory.

The loop is the tutorial's (a train and a val phase per epoch, the best val accuracy's weights kept and
restored) without its defects: a frozen backbone stays in eval mode, and by default it runs only once per
image (its features are computed once, and the head trains on them).
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft import checkpoint as ckpt
from graft import distributed as dist
from graft._imports import import_torchvision
from graft.config import TrainConfig
from graft.errors import ConfigError, DataError, ResourceError, RunError
from graft.heads import HeadSpec
from graft.runtime import (
    autocast,
    fast_inference,
    one_thread,
    optimize_for_inference,
    pick_device,
    prepare_input,
    progress,
    seed_everything,
    tune_convolutions,
)

RESULTS_HEADER = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "stage"]


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
        ]


@dataclass
class FitResult:
    """Where :func:`fit` stands: the best epoch so far and its weights, the epochs run, the epochs since the last
    improvement. Given back as ``fit(start=...)``, it continues the stage where it stopped (``--resume``)."""

    best_val_acc: float
    best_epoch: int
    history: list[EpochResult] = field(default_factory=list)
    stale: int = 0
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)


@dataclass
class RunResult:
    """What ``graft.train`` returns: where the run is and how it went."""

    run_dir: Path
    metrics: dict[str, Any]

    @property
    def best_val_acc(self) -> float:
        return float(self.metrics["best_val_acc"])


# ----------------------------------------------------------------------------------------------------------------
# the loop


def run_epoch(
    model: nn.Module,
    loader: Any,
    criterion: nn.Module,
    device: torch.device,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    desc: str = "",
) -> tuple[float, float]:
    """One pass over ``loader``: training when an optimizer is given, else evaluation. Returns (loss, accuracy)."""
    training = optimizer is not None
    model.train(training)
    if not training:  # the exact numerics of graft predict, so val accuracy is reproducible
        model = _inference_model(dist.unwrap(model), device)
    # Sums stay on the device: reading them back per batch would make a GPU wait for every batch.
    total_loss = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
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
            total_loss += loss.detach() * labels.size(0)
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.size(0)
    # under torchrun, a loader of this rank's share: the totals of all ranks (the whole data)
    loss_sum, hits, seen = dist.epoch_totals(loader, total_loss.item(), correct.item(), seen)
    return loss_sum / max(seen, 1), hits / max(seen, 1)


def _inference_model(model: nn.Module, device: torch.device) -> nn.Module:
    """What :class:`graft.predict.Classifier` runs: the body through :func:`fast_inference`, the head in torch."""
    from graft.model import GraftModel

    if isinstance(model, GraftModel):
        return nn.Sequential(fast_inference(model.body, device), model.head.eval())
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
    best_val_acc: float = -1.0,
    first_epoch: int = 1,
    stage: str = "train",
    start: FitResult | None = None,
) -> FitResult:
    """Train for ``epochs`` (or until ``patience`` epochs pass without a better val accuracy), keep the weights
    of the best val accuracy and load them back into ``model`` at the end.

    ``best_val_acc`` and ``first_epoch`` continue an earlier stage: an epoch counts as best only when it beats
    that stage, and if none does, the model goes back to the state it started from (that stage's best).
    ``start`` continues this stage after its ``len(start.history)`` finished epochs (model, optimizer and scheduler
    already restored). ``on_epoch(record, improved, result)`` runs after every epoch.
    """
    result = start or FitResult(best_val_acc=best_val_acc, best_epoch=0)
    if result.best_state is None:
        result.best_state = _snapshot(model)
    last = first_epoch + epochs - 1
    for epoch in range(first_epoch + len(result.history), last + 1):
        if patience is not None and result.stale >= patience:
            break
        began = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = run_epoch(
            model, train_data, criterion, device, optimizer=optimizer, desc=f"epoch {epoch}/{last} train"
        )
        val_loss, val_acc = run_epoch(model, val_data, criterion, device, desc=f"epoch {epoch}/{last} val")
        if not math.isfinite(train_loss):
            kept = (
                f"the best model so far (epoch {result.best_epoch}) is kept"
                if result.best_epoch
                else "no better epoch than before this stage was found, so nothing new was saved"
            )
            raise RunError(f"the training loss became {train_loss} at epoch {epoch}: lower --lr (now {lr:g}); {kept}")
        if scheduler is not None:
            scheduler.step()
        improved = val_acc > result.best_val_acc
        result.stale = 0 if improved else result.stale + 1
        if improved:
            result.best_val_acc, result.best_epoch = val_acc, epoch
            result.best_state = _snapshot(model)
        seconds = time.perf_counter() - began
        record = EpochResult(epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds, stage)
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record, improved, result)
    model.load_state_dict(result.best_state)
    return result


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


# ----------------------------------------------------------------------------------------------------------------
# from a config to a run directory


def train(data: str | Path | None = None, /, **options: Any) -> RunResult:
    """Train a classifier on an image folder and write a run directory.

    Args:
        data: dataset folder (``DATA/train/<class>``, ``DATA/val/<class>``, or ``DATA/<class>``).
        **options: any field of :class:`graft.config.TrainConfig` (``arch``, ``mode``, ``epochs``, ...).

    Returns:
        A :class:`RunResult` with ``run_dir`` and the run's ``metrics``.

    Example:
        >>> run = graft.train("hymenoptera_data", arch="mobilenet_v2", mode="freeze", epochs=10)
        >>> graft.load(run.run_dir).predict("bee.jpg", top_k=2)
    """
    if data is not None:
        options["data"] = data
    unknown = set(options) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}; see graft.TrainConfig for the valid ones")
    return run_training(TrainConfig(**options))


def run_training(cfg: TrainConfig, *, log: Callable[[str], None] = print) -> RunResult:
    """Run ``cfg`` end to end (see :func:`train`)."""
    if cfg.int8 or cfg.mode == "qat":  # int8 runs: graft.quantization
        from graft.quantization import run_int8_training

        dist.refuse("--int8 / --mode qat")
        return run_int8_training(cfg, log=log)
    from graft import data as datamod
    from graft import resume
    from graft.backbones import get_backbone
    from graft.model import build_model, choose_weights
    from graft.plots import CurvesWriter
    from graft.report import write_run_report

    started = time.perf_counter()
    changed = resume.check_resumable(cfg) if cfg.resume else []  # before any work: same options as the first time
    # under torchrun: join the process group; this rank's GPU
    device = dist.setup(pick_device(cfg.device), nproc=cfg.nproc)
    if not dist.is_main():
        log = _silent  # rank 0 speaks for all
    generator = seed_everything(cfg.seed)
    spec = get_backbone(cfg.arch)
    chosen = choose_weights(spec, cfg.pretrained)
    preprocess = chosen.preprocess if chosen else spec.preprocess
    # The scan decodes every image to validate it; up to 1 GiB of them is kept for the first pass over the
    # data (features or the in-memory image store), so that a run decodes each image once.
    keep = min(1 << 30, int(datamod.available_memory() * 0.1))
    dataset = datamod.scan(
        cfg.data, val_split=cfg.val_split, seed=cfg.seed, draft=preprocess.resize_size, keep_decoded=keep
    )
    model, weights, pretrained = build_model(
        spec, len(dataset.classes), head=HeadSpec(cfg.hidden, cfg.dropout), pretrained=cfg.pretrained
    )
    run_dir = cfg.resume or dist.on_main(lambda: _make_run_dir(cfg))  # rank 0 picks the name for all
    if cfg.resume:
        _check_same_split(run_dir, dataset)
    log(
        f"run {run_dir}: {cfg.arch} ({pretrained.tag or pretrained.source}), {cfg.mode}, "
        f"{len(dataset.train)} train / {len(dataset.val)} val images, {len(dataset.classes)} classes, {device}"
    )
    if dataset.report.skipped:
        log(f"skipped {len(dataset.report.skipped)} file(s), see {run_dir / 'data_report.json'}")
    stages = cfg.stages()
    if dist.is_main():  # only rank 0 writes the run directory
        config = cfg.to_dict() | {"resolved_lr": stages[-1][2], "stages": stages}
        ckpt.atomic_write_json(run_dir / "config.json", config)
        ckpt.atomic_write_json(run_dir / "data_report.json", dataset.report.to_dict() | {"split": dataset.split_dict()})

    meta = _model_meta(cfg, spec, weights, pretrained, preprocess, dataset.classes)
    model.to(device)
    cache_key = None
    if pretrained.sha256:  # the body's weights are known exactly: its features can be stored and reused
        # which body; graft.features.store_key adds preprocessing, view and the engine that computes the rows
        cache_key = {
            "arch": spec.name,
            "arch_kwargs": meta["arch_kwargs"],
            "weights_sha256": pretrained.sha256,
            "device": device.type,
        }
    data = _StageData(cfg, model, dataset, preprocess, device, generator, cache_key, log)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    saver = resume.ProgressSaver(run_dir, model, generator, device)
    progress = resume.load_progress(run_dir) if cfg.resume else None  # the last finished epoch of a killed run
    if cfg.resume:
        done = f"after epoch {len(progress.history)}" if progress else "from the start (no epoch had finished)"
        log(f"resuming {run_dir} {done}" + (f"; changed: {', '.join(changed)}" if changed else ""))
    elif dist.is_main():
        saver.discard()  # a reused --name must not resume someone else's state
    rows: list[list[Any]] = [r.row() for r in progress.history] if progress else []
    curves = CurvesWriter(run_dir, log=log)  # redrawn after slow epochs; the report draws the final one
    saved_epoch = [0]  # the epoch whose weights model.safetensors holds (0: none saved by this process)
    pacer = _Pacer(cfg.checkpoint_budget)

    def on_epoch(r: EpochResult, improved: bool, result: FitResult) -> None:
        if not dist.is_main():
            return
        rows.append(r.row())
        ckpt.write_csv(run_dir / "results.csv", RESULTS_HEADER, rows)
        log(
            f"epoch {r.epoch:>3} {r.stage:<4} train loss {r.train_loss:.4f} acc {r.train_acc:.4f}  "
            f"val loss {r.val_loss:.4f} acc {r.val_acc:.4f}  lr {r.lr:.2e}  {r.seconds:5.1f}s"
            + ("  *best" if improved else "")
        )
        curves()
        if pacer.due():  # after every epoch, unless epochs are much faster than saving (see _Pacer)
            with pacer.timed():
                if result.best_epoch > saved_epoch[0]:  # a crash later loses at most the epochs after the best one
                    _save_model(run_dir, model, meta, best=None if improved else result.best_state)
                    saved_epoch[0] = result.best_epoch
                saver.save(result)  # last: the epoch is done once this is written (--resume goes on from here)

    fit_start = time.perf_counter()
    best_acc, best_epoch, history = (-1.0, 0, []) if progress is None else progress.before_stage
    with _memory_advice(cfg, device, run_dir):  # CUDA out of memory -> a batch size to try
        for index, (stage, epochs, lr) in enumerate(stages):
            if progress and index < progress.stage_index:
                continue  # finished before the crash; its epochs are in history
            on_features = stage == "head" and (cfg.cache_features or cfg.mode == "finetune")
            if stage == "head":
                model.freeze()
            else:
                model.unfreeze()
            target, train_data, val_data = (model.head, *data.features()) if on_features else (model, *data.images())
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
                start = progress.restore(model, optimizer, scheduler, generator)
            saver.stage(index, best=(best_acc, best_epoch), earlier=history, optimizer=optimizer, scheduler=scheduler)
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
                    on_epoch=on_epoch,
                    patience=cfg.patience or (5 if on_features else None),
                    best_val_acc=best_acc,
                    first_epoch=len(history) + 1,
                    stage=stage,
                    start=start,
                )
            history = history + result.history
            if result.best_epoch:
                best_acc, best_epoch = result.best_val_acc, result.best_epoch
            best_acc, best_epoch = dist.broadcast_object((best_acc, best_epoch))  # ranks decide alike from here
    fit_seconds = time.perf_counter() - fit_start
    if dist.is_main() and (not best_epoch or saved_epoch[0] != best_epoch):  # else the file holds the best weights
        _save_model(run_dir, model, meta)
    metrics = {
        "best_val_acc": best_acc,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "best_val_loss": history[best_epoch - 1].val_loss,
        "train_seconds": round(time.perf_counter() - started, 3),
        "fit_seconds": round(fit_seconds, 3),
        "n_train": len(dataset.train),
        "n_val": len(dataset.val),
        "classes": dataset.classes,
        "device": str(device),
    } | ({"world_size": dist.world_size()} if dist.is_distributed() else {})
    if not dist.is_main():
        return RunResult(run_dir=run_dir, metrics=metrics)  # rank 0 writes the metrics and the report
    ckpt.atomic_write_json(run_dir / "metrics.json", metrics)
    log(
        f"best val acc {best_acc:.4f} at epoch {best_epoch}; {metrics['train_seconds']:.1f}s in all; "
        f"run saved to {run_dir}"
    )
    write_run_report(run_dir, log=log)  # evaluation, figures, report.html; a failure only warns
    saver.discard()  # the run is complete: nothing to resume
    return RunResult(run_dir=run_dir, metrics=metrics)


class _StageData:
    """The two kinds of training data, each built once on first use: the frozen body's features (for a head
    stage) and images (decoded once and kept in memory when they fit, else decoded per epoch)."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: Any,
        dataset: Any,
        preprocess: Any,
        device: torch.device,
        generator: torch.Generator,
        cache_key: dict[str, Any] | None,
        log: Callable[[str], None],
    ) -> None:
        from graft.runtime import default_workers

        self.cfg, self.model, self.dataset, self.preprocess = cfg, model, dataset, preprocess
        self.device, self.generator, self.cache_key, self.log = device, generator, cache_key, log
        self.workers = default_workers() if cfg.workers is None else cfg.workers
        self._features: tuple[Any, Any] | None = None
        self._images: tuple[Any, Any] | None = None

    def features(self) -> tuple[Any, Any]:
        from graft.runtime import inference_loader, train_loader

        if self._features is None:
            cfg, ds = self.cfg, self.dataset
            tensors = {}
            for split, views in (("train", range(cfg.feature_views + 1)), ("val", range(1))):
                samples = getattr(ds, split)
                args = (self.model, samples, self.preprocess, self.cache_key, cfg, self.device, self.workers, self.log)
                tensors[split] = (
                    torch.cat([_features(*args, split, view, ds.decoded if view == 0 else None) for view in views]),
                    torch.tensor([s.label for s in samples] * len(views)),
                )
            self._features = (
                train_loader(
                    torch.utils.data.TensorDataset(*tensors["train"]),
                    batch_size=cfg.batch_size,
                    workers=0,
                    generator=self.generator,
                ),
                inference_loader(torch.utils.data.TensorDataset(*tensors["val"]), batch_size=cfg.batch_size, workers=0),
            )
        return self._features

    def images(self) -> tuple[Any, Any]:
        from graft.data import ImageDataset, MemoryImageDataset, available_memory, estimated_decoded_bytes
        from graft.gpu import DeviceBatches, fits_on_device
        from graft.preprocess import eval_crop, eval_transform, normalize, resize_shorter, train_transform
        from graft.runtime import inference_loader, train_loader

        if self._images is None:
            cfg, p, ds = self.cfg, self.preprocess, self.dataset
            keep = round(p.resize_size * 1.25)  # room for RandomResizedCrop without upsampling most crops
            need = estimated_decoded_bytes(ds.train, keep) + len(ds.val) * 3 * p.input_size**2
            # augmented on the GPU (graft.gpu); DDP ranks shard DataLoaders instead
            on_gpu = fits_on_device(need, self.device) and not dist.is_distributed()
            if on_gpu or need < min(4 << 30, available_memory() * 0.3):
                start = time.perf_counter()
                train = MemoryImageDataset(
                    ds.train,
                    prepare=resize_shorter(keep, p.interpolation),
                    transform=None if on_gpu else train_transform(p),
                    draft=keep,
                )
                val = MemoryImageDataset(
                    ds.val,
                    prepare=eval_crop(p),
                    transform=None if on_gpu else normalize(p),
                    draft=p.resize_size,
                    decoded=ds.decoded,
                )
                self.log(
                    f"decoded {len(train) + len(val)} images into {'GPU ' if on_gpu else ''}memory "
                    f"({(train.nbytes + val.nbytes) / 2**20:.0f} MiB, {time.perf_counter() - start:.1f}s)"
                )
                if on_gpu:
                    ds.decoded.clear()
                    self._images = tuple(
                        DeviceBatches(
                            part.images,
                            [s.label for s in part.samples],
                            preprocess=p,
                            batch_size=cfg.batch_size,
                            device=self.device,
                            augment=augment,
                            generator=self.generator,
                        )
                        for part, augment in ((train, True), (val, False))
                    )
                    return self._images
                workers = 0  # only crops and flips remain per epoch: cheaper in-process than in workers
            else:
                train = ImageDataset(ds.train, train_transform(p), draft=p.resize_size)
                val = ImageDataset(ds.val, eval_transform(p), draft=p.resize_size)
                workers = self.workers
            ds.decoded.clear()  # what the scan kept and no stage took
            self._images = dist.shard_loaders(  # under torchrun: each rank its share
                train_loader(train, batch_size=cfg.batch_size, workers=workers, generator=self.generator),
                inference_loader(val, batch_size=cfg.batch_size, workers=workers),
            )
        return self._images


def _features(
    model: Any,
    samples: Any,
    preprocess: Any,
    cache_key: dict[str, Any] | None,
    cfg: TrainConfig,
    device: torch.device,
    workers: int,
    log: Callable[[str], None],
    split: str,
    view: int = 0,
    decoded: Any = None,
) -> torch.Tensor:
    """The frozen body's features of ``samples``: from the on-disk store when the starting weights are known
    (random weights differ per seed, so they are not stored)."""
    from graft.features import cached_features, extract_features

    name = f"{split} features" + (f" (view {view})" if view else "")
    kwargs = {
        "device": device,
        "batch_size": cfg.batch_size,
        "workers": workers,
        "desc": name,
        "view": view,
        "decoded": decoded,
    }
    if cache_key is None:
        return dist.sharded(extract_features)(model.body, samples, preprocess, **kwargs)
    start = time.perf_counter()
    # under torchrun: the ranks compute shares of the missing rows, rank 0 stores them all, the others wait for it
    extract, write = dist.sharded(extract_features), dist.is_main()
    feats, computed = cached_features(
        model.body, samples, preprocess, cache_key, extract=extract, write=write, **kwargs
    )
    dist.barrier()
    seconds = time.perf_counter() - start
    log(f"{name}: {len(samples) - computed} from cache, {computed} computed ({seconds:.1f}s)")
    return feats


def _silent(line: str) -> None:
    """The log of ranks other than 0."""


def _check_same_split(run_dir: Path, dataset: Any) -> None:
    """A resumed run must see the images its first part trained on, split the same way."""
    saved = ckpt.read_json(run_dir / "data_report.json").get("split")
    if saved != dataset.split_dict():
        raise DataError(
            f"--resume {run_dir}: the dataset changed since the run started (its train/val split differs from "
            f"{run_dir / 'data_report.json'}); resume with the same images, or start a new run"
        )


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


def _make_run_dir(cfg: TrainConfig) -> Path:
    cfg.out.mkdir(parents=True, exist_ok=True)
    name = cfg.name or ckpt.next_run_name(cfg.out, f"{cfg.arch.replace('/', '_')}-{cfg.mode}")
    run_dir = cfg.out / name
    if run_dir.exists() and not cfg.exist_ok:
        raise ConfigError(
            f"run directory {run_dir} already exists: choose another --name, or pass --exist-ok to replace its files"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _model_meta(
    cfg: TrainConfig, spec: Any, weights: Any, pretrained: Any, preprocess: Any, classes: list[str]
) -> dict[str, Any]:
    import graft

    torchvision = import_torchvision()

    return {
        "format": ckpt.FORMAT,
        "arch": spec.name,
        "arch_source": spec.source,
        "arch_kwargs": spec.arch_kwargs(weights),
        "in_features": spec.in_features,
        "classes": classes,
        "head": HeadSpec(cfg.hidden, cfg.dropout).to_dict(),
        "preprocess": preprocess.to_dict(),
        "mode": cfg.mode,
        "pretrained": pretrained.to_dict(),
        "versions": {
            "graft": graft.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
    }


def _save_model(
    run_dir: Path, model: nn.Module, meta: dict[str, Any], *, best: dict[str, torch.Tensor] | None = None
) -> None:
    """Weights (with a copy of model.json inside) first, then model.json: see :func:`graft.checkpoint.save_model`.

    ``best``: a state dict kept by :func:`fit` for an earlier epoch (of the whole model, or of the head during a
    head stage, possibly under a DDP ``module.`` prefix) to save instead of the model's current weights."""
    state = model.state_dict()
    if best is not None:
        best = {k.removeprefix("module."): v for k, v in best.items()}
        state = state | (best if best.keys() <= state.keys() else {f"head.{k}": v for k, v in best.items()})
    ckpt.save_model(run_dir, state, meta)


class _Pacer:
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
