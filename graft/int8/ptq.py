"""``graft quantize``: post-training quantization of a float run into a new int8 run directory.

Calibration on the run's own training images (spread over the split, so every class is seen), the program checked
and saved (:mod:`graft.int8.program`), then val accuracy, size and speed of both models measured through the
predict path and written to ``quantization.json``.
"""

from __future__ import annotations

import copy
import os
import shutil
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.core import atomic, rundir
from graft.core import checkpoint as ckpt
from graft.core.config import QuantizeConfig, from_options
from graft.core.config.fields import takes_fields
from graft.core.errors import ConfigError, RunError
from graft.core.runmeta import RunMeta
from graft.inference.classifier import Classifier
from graft.inference.int8_archive import INT8_FORMAT, PROGRAM_FILE, QuantizationError
from graft.inference.int8_classifier import Int8Classifier, Int8Program
from graft.inference.logits import compute_logits
from graft.int8.backend import ACT_PERCENTILE, BENCH_BATCH, QUANT_FILE, Backend, choose_backend, cpu_info
from graft.int8.program import quantize_checked, save_program

# measuring


def _median_seconds(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``fn(x)`` after one warm-up call (which also compiles what is compiled lazily)."""
    with torch.no_grad():
        fn(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def accuracy(clf: Any, paths: Sequence[Path], labels: Sequence[int], *, batch_size: int) -> float:
    """Top-1 accuracy through ``clf.logits`` with the eval transform (what ``graft predict`` computes)."""
    logits, kept, _ = compute_logits(clf, paths, batch_size=batch_size)
    correct = sum(int(logits[j].argmax() == labels[i]) for j, i in enumerate(kept))
    return correct / max(len(paths), 1)


def float_file(model: nn.Module) -> bytes:
    """The float model as graft saves it (safetensors)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()})


def measure(
    fp32: Classifier, int8: Int8Classifier, fp32_acc: float, int8_acc: float, fp32_file: bytes, int8_file: bytes
) -> dict[str, Any]:
    """The figures of ``quantization.json`` (CPU; images/s at batch 32, latency at batch 1; medians).

    ``fp32_images_per_s`` is the float model in eager mode (as the tutorial runs it, the issue's reference);
    ``fp32_graft_images_per_s`` is graft's own float predict path (BatchNorm folded; ONNX Runtime when installed),
    the honest competitor. ``fp32_bytes`` is model.safetensors, ``int8_bytes`` model.pt2 (deflated);
    ``fp32_deflated_bytes`` is the float file deflated the same way, for a like-for-like size ratio."""
    size = fp32.preprocess.input_size
    torch.manual_seed(0)
    batch = torch.randn(BENCH_BATCH, 3, size, size)
    eager = copy.deepcopy(fp32.float_model()).cpu().eval()
    return {
        "fp32_val_acc": fp32_acc,
        "int8_val_acc": int8_acc,
        "fp32_bytes": len(fp32_file),
        "int8_bytes": len(int8_file),
        "fp32_deflated_bytes": len(zlib.compress(fp32_file, 9)),
        "fp32_images_per_s": round(BENCH_BATCH / _median_seconds(eager, batch, 3), 2),
        "fp32_graft_images_per_s": round(BENCH_BATCH / _median_seconds(fp32.logits, batch, 3), 2),
        "int8_images_per_s": round(BENCH_BATCH / _median_seconds(int8.logits, batch, 5), 2),
        "fp32_latency_ms": round(1000 * _median_seconds(eager, batch[:1], 10), 2),
        "int8_latency_ms": round(1000 * _median_seconds(int8.logits, batch[:1], 20), 2),
        "batch_size": BENCH_BATCH,
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# int8 run directories


@dataclass
class QuantizeResult:
    """What :func:`quantize` (``graft quantize``) and int8 training wrote."""

    run_dir: Path
    figures: dict[str, Any]

    def summary(self) -> str:
        f = self.figures
        return (
            f"val acc fp32 {f['fp32_val_acc']:.4f} -> int8 {f['int8_val_acc']:.4f}; size "
            f"{f['fp32_bytes'] / 1e6:.2f} MB -> {f['int8_bytes'] / 1e6:.2f} MB "
            f"({f['fp32_bytes'] / f['int8_bytes']:.1f}x smaller); batch {f['batch_size']}: "
            f"fp32 eager {f['fp32_images_per_s']:.1f} img/s (graft's float path "
            f"{f['fp32_graft_images_per_s']:.1f}), int8 {f['int8_images_per_s']:.1f} img/s; batch 1: fp32 "
            f"{f['fp32_latency_ms']:.1f} ms, int8 {f['int8_latency_ms']:.1f} ms"
        )


def calibration_batches(preprocess: Any, paths: Sequence[Path], n: int) -> list[torch.Tensor]:
    """``n`` training images spread evenly over the split (so every class is seen), eval transform, batches of 32."""
    from graft.core.errors import ImageError
    from graft.core.preprocess import eval_transform
    from graft.data.images import load_rgb

    if not paths:
        raise RunError("no training images to calibrate on")
    transform = eval_transform(preprocess)
    n = min(n, len(paths))
    picks = sorted({round(i * (len(paths) - 1) / max(n - 1, 1)) for i in range(n)})
    tensors = []
    for i in picks:
        try:
            tensors.append(transform(load_rgb(paths[i], draft=preprocess.resize_size)))
        except ImageError:
            continue  # scan already skipped unreadable files; one that broke since costs one calibration image
    if not tensors:
        raise RunError("none of the calibration images could be read")
    return list(torch.stack(tensors).split(BENCH_BATCH))


def setting_info(backend: Backend, ranges: str) -> dict[str, Any]:
    """What quantization.json records of the setting: quantizer, activation bits and ranges, and the CPU."""
    return {
        "backend": backend.to_dict(),
        "activation_bits": backend.activation_bits,
        "activation_ranges": ranges,
        "cpu": cpu_info(),
    }


def _int8_dir(run_dir: Path, name: str | None, exist_ok: bool) -> Path:
    out = run_dir.parent / (name or f"{run_dir.name}-int8")
    if out.exists() and not exist_ok:
        raise ConfigError(f"{out} already exists: pass --name for another folder, or --exist-ok to replace its files")
    out.mkdir(parents=True, exist_ok=True)
    return out


def finish_int8_run(
    out: Path, meta: dict[str, Any], data: bytes, program: Int8Program, info: dict[str, Any]
) -> Int8Classifier:
    """Write ``model.json`` for ``model.pt2`` (its sha256 and how it was made); the classifier over ``program``."""
    import hashlib

    drop = ("weights_file", "weights_sha256")
    meta = {k: v for k, v in meta.items() if k not in drop} | {
        "program_file": PROGRAM_FILE,
        "program_sha256": hashlib.sha256(data).hexdigest(),
        "quantization": info | {"format": INT8_FORMAT},
    }
    atomic.atomic_write_json(out / ckpt.META_FILE, meta)
    return Int8Classifier(program.graph, RunMeta.from_dict(meta, source=out / ckpt.META_FILE), out, program=program)


def write_figures(out: Path, figures: dict[str, Any], info: dict[str, Any], metrics: dict[str, Any]) -> None:
    """quantization.json, and metrics.json with ``best_val_acc`` = the int8 val accuracy."""
    atomic.atomic_write_json(out / QUANT_FILE, figures | {"quantization": info})
    base = {"best_val_acc": figures["int8_val_acc"], "fp32_val_acc": figures["fp32_val_acc"], "device": "cpu"}
    atomic.atomic_write_json(out / "metrics.json", base | metrics | {"int8": True})


@takes_fields(QuantizeConfig, "run")
def quantize(run_dir: str | Path, /, *, log: Callable[[str], None] = print, **options: Any) -> QuantizeResult:
    """Post-training int8 quantization of a float run into a new run directory (``RUN-int8`` by default).

    Calibrates on ``calib`` of the run's training images (eval transform), then measures val accuracy (fp32 and
    int8, both through the predict path), sizes and speeds into ``quantization.json``.

    Args:
        run_dir: a float run written by ``graft train``.
        log: where progress lines go.
        **options: the fields of :class:`graft.core.config.QuantizeConfig` (``graft quantize --help``), with its
            defaults: ``calib`` (training images to calibrate on), ``activation_bits`` (``"auto"``: 8 on CPUs with
            VNNI, else 7; ``"7"`` or ``"8"``; see :func:`choose_backend`), ``name`` (folder of the int8 run, next
            to ``run_dir``), ``exist_ok`` (replace the files of an existing int8 run folder); ``json`` is the
            command's output format.
    """
    return run_quantize(from_options(QuantizeConfig, options, run=run_dir), log=log)


def run_quantize(cfg: QuantizeConfig, *, log: Callable[[str], None] = print) -> QuantizeResult:
    """:func:`quantize` with a :class:`QuantizeConfig` (checked when it was made)."""
    from graft.inference.loading import load

    run_dir, name = cfg.run, cfg.name
    src = load(run_dir, device="cpu")
    model = src.float_model()
    if model is None:
        raise QuantizationError(f"{run_dir} is already an int8 run; quantize the float run it came from")
    if src.multilabel:  # its accuracy, calibration split and int8 run files are single-label ones
        raise QuantizationError("multi-label int8 is not supported yet: use the float run (predict, serve, export)")
    backend = choose_backend(activation_bits=cfg.activation_bits)
    calibrate_on = "calibration needs them: put the data back where the run was trained"
    train_paths = rundir.run_split(run_dir, "train", src.classes, fix=calibrate_on, skip_unknown=True).paths
    val = rundir.run_split(run_dir, "val", src.classes)
    val_paths, val_labels = val.paths, val.labels
    calibration = calibration_batches(src.preprocess, train_paths, cfg.calib)
    fresh = not (run_dir.parent / (name or f"{run_dir.name}-int8")).exists()
    out = _int8_dir(run_dir, name, cfg.exist_ok)
    size = src.preprocess.input_size
    saved: dict[str, bytes] = {}

    def finish(converted: nn.Module) -> Int8Program:
        saved["data"], program = save_program(out, converted, model.head, size)
        return program

    try:
        _, program, backend, check = quantize_checked(
            model.body, calibration, size, backend=backend, what=src.meta.arch, log=log, finish=finish
        )
    except QuantizationError:
        if fresh:  # nothing usable was written: the same command with other settings may run again
            shutil.rmtree(out, ignore_errors=True)
        raise
    info = {
        "method": "ptq",
        "source_run": str(run_dir),
        "calibration_images": sum(len(b) for b in calibration),
        **setting_info(backend, f"{ACT_PERCENTILE:.2%} percentile of each calibration histogram"),
        "compiled_check": check,
    }
    data = saved["data"]
    int8 = finish_int8_run(out, src.meta.to_dict(), data, program, info)
    config = atomic.read_json_or(run_dir / "config.json", {})
    batch = int(config.get("batch_size", BENCH_BATCH))  # the run's val numerics: its own batch size
    start = time.perf_counter()
    int8_acc = accuracy(int8, val_paths, val_labels, batch_size=batch)
    fp32_acc = accuracy(src, val_paths, val_labels, batch_size=batch)
    log(f"int8: val accuracy fp32 {fp32_acc:.4f}, int8 {int8_acc:.4f} ({time.perf_counter() - start:.1f}s)")
    fp32_file = (run_dir / ckpt.MODEL_FILE).read_bytes()
    figures = measure(src, int8, fp32_acc, int8_acc, fp32_file, data)
    for f in ("data_report.json", "config.json"):
        if (run_dir / f).exists():
            shutil.copyfile(run_dir / f, out / f)
    write_figures(out, figures, info, {"n_val": len(val_paths), "classes": src.classes})
    result = QuantizeResult(out, figures)
    log(f"int8: {result.summary()}; wrote {out}")
    return result


# ----------------------------------------------------------------------------------------------------------------
