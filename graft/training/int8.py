"""Int8 training runs: an int8 frozen backbone (``graft train --mode freeze --int8``) and quantization-aware
fine-tuning (``graft train --mode qat``), built on the training loop and the int8 program of :mod:`graft.int8`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from graft.core import atomic, rundir
from graft.core.config import TrainConfig
from graft.core.device import Precision
from graft.core.errors import ConfigError
from graft.core.runmeta import RunMeta
from graft.inference.float_classifier import FloatClassifier
from graft.int8.backend import ACT_PERCENTILE, QAT_LR_FACTOR, Backend, choose_backend
from graft.int8.program import (
    check_compiled,
    checks_out,
    export_module,
    forced_failure,
    quantize_checked,
    save_program,
    separate_module_calls,
    strip_unused,
)
from graft.int8.ptq import (
    QuantizeResult,
    accuracy,
    calibration_batches,
    finish_int8_run,
    float_file,
    measure,
    setting_info,
    write_figures,
)
from graft.models.model import GraftModel
from graft.training.callbacks import Callback, Callbacks, ResultsLog
from graft.training.loop import fit, make_optimizer, make_scheduler, run_epoch
from graft.training.pipeline import RunResult, RunSetup, set_up
from graft.training.stage_inputs import StageData

# int8 training: --mode freeze --int8, and --mode qat


class _QatModel(nn.Module):
    """A body prepared for QAT (an exported graph with fake quantization) + the float head.

    The body's BatchNorm stays in eval mode (running statistics fixed) while the weights train: exported graphs
    ignore ``module.train``, so it is switched the PT2E way once, here; ``train()``/``eval()`` only reach the head."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        from torchao.quantization.pt2e import move_exported_model_to_eval

        super().__init__()
        self.body, self.head = move_exported_model_to_eval(body), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            raise TypeError("QAT graphs are not traced by torch.fx")  # graft's BN folding leaves this model as is
        return self.head(self.body(x))

    def train(self, mode: bool = True) -> _QatModel:
        self.training = mode
        self.head.train(mode)
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _QatModel:
        return self  # graft's eval path copies models before folding BatchNorm; this one is used as it is


def _fit(target: nn.Module, data: tuple[Any, Any], cfg: TrainConfig, lr: float, epochs: int, **kw: Any) -> Any:
    """:func:`graft.training.loop.fit` on the CPU with the run's optimizer, scheduler and loss."""
    optimizer = make_optimizer(cfg, [p for p in target.parameters() if p.requires_grad], lr)
    return fit(
        target,
        *data,
        optimizer=optimizer,
        scheduler=make_scheduler(cfg, optimizer, epochs),
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        epochs=epochs,
        device=torch.device("cpu"),
        patience=cfg.patience,
        **kw,
    )


def run_int8_training(
    cfg: TrainConfig, *, log: Callable[[str], None] = print, callbacks: list[Callback] = ()
) -> RunResult:
    """``graft train --mode freeze --int8`` and ``graft train --mode qat``.

    freeze --int8: the backbone is quantized (calibrated on ``cfg.calib`` training images) and a float head trains
    on its int8 features; the same head trained on the float features gives ``fp32_val_acc``.
    qat: ``--mode finetune``'s float schedule first (the head on float features for ``--head-epochs``, then every
    layer for ``--epochs``), then ``--qat-epochs`` of fake-quantized training from calibrated ranges; then int8.
    """
    if cfg.resume:
        raise ConfigError("--resume does not apply to int8 runs (--int8, --mode qat) yet; start the run again")
    if cfg.device not in ("auto", "cpu"):
        raise ConfigError(
            f"int8 training runs on the CPU (int8 kernels are CPU kernels); use --device cpu, not {cfg.device}"
        )
    started = time.perf_counter()
    backend = choose_backend(activation_bits=cfg.activation_bits)
    device = torch.device("cpu")
    setup = set_up(cfg)
    if setup.dataset.label_sets is not None:
        raise ConfigError("multi-label int8 is not supported yet: train the table without --int8 / --mode qat")
    run_dir = rundir.make_run_dir(cfg)
    setup.announce(log, run_dir, cfg, "freeze --int8" if cfg.mode == "freeze" else "qat", "cpu")
    fp32 = Precision("fp32", "int8 and QAT runs train in fp32")  # fake quantization and calibration expect fp32
    rundir.write_start(run_dir, cfg, setup.dataset, fp32.to_dict())
    meta = setup.meta(cfg)
    listeners = Callbacks([ResultsLog(log), *callbacks])
    listeners.on_run_start(run_dir)
    # the float features of known weights are shared with float runs
    data = StageData(
        cfg, setup.model, setup.dataset, setup.preprocess, device, setup.generator, setup.cache_key(meta, "cpu"), log
    )
    size = setup.preprocess.input_size
    if cfg.mode == "freeze":
        body, head, program, check, history, fp32_acc, info = _freeze_int8(cfg, setup, data, backend, listeners, log)
        backend = info.pop("backend")
    else:
        history, fp32_acc = _float_finetune(cfg, setup.model, data, listeners)
        body, head, qat_history, check_batch, info = _qat(
            cfg, setup.model, data, backend, size, cfg.stages()[-1][2] * QAT_LR_FACTOR, len(history) + 1,
            listeners.on_epoch_end, log,
        )  # fmt: skip
        history += qat_history
    data_bytes, program = save_program(run_dir, body, head, size)
    if cfg.mode == "qat":  # QAT cannot be redone with other settings here; the check is recorded
        check = check_compiled(program, check_batch)
        if not checks_out(check):
            forced = f" ({forced_failure(backend, check)})" if backend.forced else ""
            log(f"int8: warning: the compiled kernels disagree with the eager reference ({check}){forced}")
    ranges = (
        "histogram (torchao's L2 search) on calibration images, then fixed"
        if cfg.mode == "qat"
        else f"{ACT_PERCENTILE:.2%} percentile of each calibration histogram"
    )
    info |= setting_info(backend, ranges) | {"compiled_check": check}
    int8 = finish_int8_run(run_dir, meta, data_bytes, program, info)
    dataset = setup.dataset
    int8_acc = accuracy(int8, [x.path for x in dataset.val], [x.label for x in dataset.val], batch_size=cfg.batch_size)
    log(f"int8 val acc {int8_acc:.4f} (fp32 {fp32_acc:.4f})")
    # The float model's size and speed (the same for any weights of the architecture): ``model``. Its accuracy,
    # fp32_acc, is that of the head on float features (freeze), or of the float fine-tuned model QAT started from.
    model = setup.model
    fp32 = FloatClassifier(model.eval(), RunMeta.from_dict(meta), device, run_dir)
    figures = measure(fp32, int8, fp32_acc, int8_acc, float_file(model), data_bytes)
    metrics = {
        "epochs_run": len(history),
        "train_seconds": round(time.perf_counter() - started, 3),
        "n_train": len(dataset.train),
        "n_val": len(dataset.val),
        "classes": dataset.classes,
    }
    write_figures(run_dir, figures, info, metrics)
    log(f"int8: {QuantizeResult(run_dir, figures).summary()}; run saved to {run_dir}")
    metrics = atomic.read_json(run_dir / "metrics.json")
    listeners.on_run_end(run_dir, metrics)
    return RunResult(run_dir=run_dir, metrics=metrics)


def _freeze_int8(
    cfg: TrainConfig,
    setup: RunSetup,
    data: StageData,
    backend: Backend,
    listeners: Callback,
    log: Callable[[str], None],
) -> tuple[nn.Module, nn.Module, Any, dict[str, Any], list[Any], float, dict[str, Any]]:
    """A float head on float features (the reference), the body quantized, a float head on its int8 features."""
    lr = cfg.stages()[0][2]
    untrained_head = copy.deepcopy(setup.model.head)
    setup.model.freeze()
    fp32_acc = _fit(setup.model.head, data.features(), cfg, lr, cfg.epochs).best_score
    log(f"fp32 head on float features (reference): val acc {fp32_acc:.4f}")
    calibration = calibration_batches(setup.preprocess, [x.path for x in setup.dataset.train], cfg.calib)
    body, program, backend, check = quantize_checked(
        setup.model.body, calibration, setup.preprocess.input_size, backend=backend, what=cfg.arch, log=log
    )
    int8_model = GraftModel(program, untrained_head).freeze()
    # the same images' float features were checked for leakage already (one warning per run)
    int8_data = StageData(
        cfg, int8_model, setup.dataset, setup.preprocess, data.device, setup.generator, None, log, check_leakage=False
    )
    result = _fit(
        int8_model.head, int8_data.features(), cfg, lr, cfg.epochs, on_epoch=listeners.on_epoch_end, stage="head"
    )
    info = {"method": "freeze-int8", "calibration_images": sum(len(b) for b in calibration), "backend": backend}
    return body, int8_model.head, program, check, result.history, fp32_acc, info


def _float_finetune(
    cfg: TrainConfig, model: nn.Module, data: StageData, listeners: Callback
) -> tuple[list[Any], float]:
    """``--mode finetune``'s float stages before QAT; returns their history and the float model's val accuracy."""
    stages, history, best_acc = cfg.stages(), [], -1.0
    if cfg.head_epochs:
        model.freeze()
        result = _fit(
            model.head, data.features(), cfg, stages[0][2], cfg.head_epochs, on_epoch=listeners.on_epoch_end,
            stage="head",
        )  # fmt: skip
        history, best_acc = result.history, result.best_score
    model.unfreeze()
    result = _fit(
        model, data.images(), cfg, stages[-1][2], cfg.epochs, on_epoch=listeners.on_epoch_end, stage="all",
        best_score=best_acc, first_epoch=len(history) + 1,
    )  # fmt: skip
    return history + result.history, (result.best_score if result.best_epoch else best_acc)


def _qat(
    cfg: Any,
    model: nn.Module,
    data: Any,
    backend: Backend,
    size: int,
    lr: float,
    first_epoch: int,
    on_epoch: Callable[[Any, bool, Any], None],
    log: Callable[[str], None],
) -> tuple[nn.Module, nn.Module, list[Any], torch.Tensor, dict[str, Any]]:
    """Train the float-fine-tuned ``model`` with fake quantization for ``cfg.qat_epochs``, then convert.

    Returns (int8 body, head, history, a val batch to check the compiled program on, what the run records).

    The recipe of fine-tuning QAT (torchvision's QAT reference, the PT2E tutorial): start from post-training
    ranges (calibration images through histogram observers, BatchNorm in eval mode), keep BatchNorm statistics and
    the activation ranges fixed (the weights' per-channel ranges follow the weights), and let the weights adapt to
    the int8 grid at a tenth of the fine-tuning learning rate. Measured on hymenoptera, QAT that also moved
    BatchNorm statistics and ranges on batches of 32 augmented images ended below post-training quantization.
    The calibrated start is evaluated first and competes as "epoch 0": QAT keeps an epoch only when its
    fake-quantized val accuracy beats that start, as every graft stage keeps its best epoch.
    """
    from torchao.quantization.pt2e import HistogramObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    model.train()  # exported in training mode, so that the QAT patterns (conv + BatchNorm) match
    graph = separate_module_calls(export_module(model.body, size, what=cfg.arch).module())
    qat = _QatModel(prepare_qat_pt2e(graph, backend.quantizer(is_qat=True)), model.head).eval()
    calibration = calibration_batches(data.preprocess, [sample.path for sample in data.dataset.train], cfg.calib)
    with torch.no_grad():
        for batch in calibration:
            qat.body(batch)
    for module in qat.body.modules():  # activation ranges fixed from here (the weights' follow the weights)
        if isinstance(getattr(module, "activation_post_process", None), HistogramObserver):
            module.disable_observer()
    train_data, val_data = data.images()
    start_acc = run_epoch(qat, val_data, nn.CrossEntropyLoss(), torch.device("cpu")).accuracy
    log(f"qat: calibrated start (activation ranges and BatchNorm statistics fixed): val acc {start_acc:.4f}")
    fit = _fit(
        qat, (train_data, val_data), cfg, lr, cfg.qat_epochs, on_epoch=on_epoch, stage="qat",
        first_epoch=first_epoch, best_score=start_acc,
    )  # fmt: skip
    if not fit.best_epoch:
        log(f"qat: no epoch beat the calibrated start ({start_acc:.4f}): it is kept")
    body = strip_unused(convert_pt2e(qat.body))
    info = {
        "method": "qat",
        "qat_lr": lr,
        "calibration_images": sum(len(b) for b in calibration),
        "calibrated_start_val_acc": start_acc,
        "best_qat_epoch": fit.best_epoch or None,
    }
    return body, qat.head, fit.history, next(iter(val_data))[0], info
