"""What every folder export shares (``--int8``, OpenVINO, TFLite/LiteRT, Core ML): the run's val split run through
the exported model by its own runtime beside graft's PyTorch model, the checks that refuse an export (float: top-1
and accuracy within one val image of graft's; int8: at most one point below the float model), throughput, and the
folder itself: the model, its JSON sidecar, ``export.json``, the torch-free ``predict.py`` and ``requirements.txt``.

A *runner* is the exported model as a function: float32 NCHW numpy batch (graft's eval transform) -> logits (numpy,
batch x classes). Each format module makes one from the file it wrote, loaded back by the format's runtime, so what
is measured is what was written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from graft.core import atomic, rundir
from graft.core.errors import DependencyError, RunError
from graft.core.version import __version__
from graft.deploy.formats import ExportError, ExportResult, Verification, sidecar_path

Runner = Callable[[Any], Any]
#: The largest val accuracy an int8 model may lose against the float one (one point).
MAX_DROP = 0.01
#: Seconds each model is timed for (after one warm-up batch).
TIME_SECONDS = 2.0
EXPORT_JSON = "export.json"


#: The extra that installs each folder format's tools, and the modules it must bring.
EXTRAS: dict[str, tuple[str, ...]] = {
    "openvino": ("openvino", "nncf"),
    "tflite": ("litert_torch", "ai_edge_litert"),
    "coreml": ("coremltools",),
}


def require(format: str, *, int8: bool = False) -> None:
    """Raise one ``error:`` line naming the extra when a module the format needs is not installed."""
    import importlib.util

    needed = EXTRAS[format] if int8 or format != "openvino" else ("openvino",)
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyError(
            f"--format {format} needs {' and '.join(missing)}: pip install 'graft[{format}]' "
            f"(or pip install {' '.join(m.replace('_', '-') for m in missing)})"
        )


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Keep the user's terminal clean while a converter or quantizer works: Python warnings, the root logger and
    ``loggers`` at ERROR, and the process's stdout and stderr file descriptors redirected (C++ converters and
    runtimes write their log lines and progress bars straight to them)."""
    names = ("", *loggers)
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def default_folder(run_dir: Path, format: str, int8: bool) -> Path:
    """Where a folder export goes without ``--out``: ``RUN/openvino``, ``RUN/tflite-int8``, ..."""
    return run_dir / (f"{format}-int8" if int8 else format)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def softmax(logits: Any) -> Any:
    import numpy as np

    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def calibration_batches(clf: Any, run_dir: Path, n: int, batch_size: int) -> list[Any]:
    """``n`` of the run's training images, spread evenly over the split (every class is seen), as graft's eval
    transform makes them (what the deployed model is fed), in float32 NCHW numpy batches."""
    fix = "int8 calibration needs them: put the data back where the run was trained"
    try:
        paths = rundir.run_split(run_dir, "train", clf.classes, fix=fix, skip_unknown=True).paths
    except RunError as e:
        raise ExportError(str(e)) from None
    if not paths:
        raise ExportError(f"{run_dir / rundir.DATA_REPORT} lists no training images of the model's classes")
    n = min(n, len(paths))
    picks = sorted({round(i * (len(paths) - 1) / max(n - 1, 1)) for i in range(n)})
    picked = [paths[i] for i in picks]
    batches = [b.images.numpy() for b in clf.batches(picked, batch_size=batch_size) if b.images is not None]
    if not batches:
        raise ExportError("none of the calibration images could be read")
    return batches


def val_figures(clf: Any, run_dir: Path, runners: Mapping[str, Runner], *, batch_size: int = 32) -> dict[str, Any]:
    """Every runner and graft's own PyTorch model (``graft``) over the run's val split: accuracy per model, and for
    each runner its top-1 agreement with graft's model and the largest probability difference from it.

    Returns ``{"val_images": n, "graft_val_acc": a, "<name>_val_acc": ..., "<name>_top1_agreement": ...,
    "<name>_max_probability_diff": ...}``; ``_timing_batch`` holds the largest batch seen (for :func:`speeds`)."""
    import numpy as np

    val = rundir.run_split(run_dir, "val", clf.classes)
    names = ["graft", *runners]
    correct, agree, diff, seen, timing_batch = dict.fromkeys(names, 0), dict.fromkeys(runners, 0), {}, 0, None
    for decoded in clf.batches(val.paths, batch_size=batch_size):
        if decoded.images is None:
            continue
        x = np.ascontiguousarray(decoded.images.numpy(), dtype=np.float32)
        y = np.asarray([val.labels[i] for i in decoded.positions])
        probs = {"graft": softmax(clf.logits(decoded.images).numpy().astype(np.float64))}
        for name, run in runners.items():
            probs[name] = softmax(np.asarray(run(x), dtype=np.float64))
        for name, p in probs.items():
            correct[name] += int((p.argmax(1) == y).sum())
        for name in runners:
            agree[name] += int((probs[name].argmax(1) == probs["graft"].argmax(1)).sum())
            diff[name] = max(diff.get(name, 0.0), float(np.abs(probs[name] - probs["graft"]).max()))
        seen += len(x)
        if timing_batch is None or len(x) > len(timing_batch):
            timing_batch = x
    if not seen:
        raise ExportError(f"none of the run's {len(val.paths)} val images could be read to check the export")
    figures: dict[str, Any] = {"val_images": seen, "graft_val_acc": correct["graft"] / seen}
    for name in runners:
        figures[f"{name}_val_acc"] = correct[name] / seen
        figures[f"{name}_top1_agreement"] = agree[name] / seen
        figures[f"{name}_max_probability_diff"] = diff[name]
    figures["_timing_batch"] = timing_batch
    return figures


def speeds(runners: Mapping[str, Runner], batch: Any, seconds: float = TIME_SECONDS) -> dict[str, Any]:
    """Images/s of each runner at ``batch`` (its full size) and at batch 1: the median of repeated runs after
    three warm-up runs (TorchScript's profiling executor optimizes a graph on its second call per shape), timed in
    turns (one run of each model per round), so that a change in the machine's load falls on
    every model alike instead of on whichever ran first."""
    out: dict[str, Any] = {}
    for suffix, x, budget in (("", batch, seconds), ("_batch1", batch[:1], seconds / 2)):
        times: dict[str, list[float]] = {name: [] for name in runners}
        for run in runners.values():
            for _ in range(3):
                run(x)
        start = time.perf_counter()
        while time.perf_counter() - start < budget * len(runners) or min(map(len, times.values())) < 3:
            for name, run in runners.items():
                t = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - t)
        for name, ts in times.items():
            out[f"{name}_images_per_s{suffix}"] = len(x) / statistics.median(ts)
    out["timing"] = {"batch_size": len(batch), "threads": cores(), "load_avg_1m": os.getloadavg()[0]}
    return out


def check_float(figures: dict[str, Any], name: str, run_dir: Path, format: str) -> None:
    """Refuse a float export whose top-1 differs from graft's on more than one val image, or whose val accuracy is
    more than one image away from graft's (nothing written)."""
    n = figures["val_images"]
    disagree = round((1 - figures[f"{name}_top1_agreement"]) * n)
    off = round(abs(figures[f"{name}_val_acc"] - figures["graft_val_acc"]) * n)
    if disagree > 1 or off > 1:
        raise ExportError(
            f"the {format} export of {run_dir} disagrees with graft's model on {disagree} of {n} val images "
            f"(val acc {figures[f'{name}_val_acc']:.4f} vs {figures['graft_val_acc']:.4f}; at most one image may "
            "differ): nothing was written. Report this with the run's model.json; meanwhile export --format onnx"
        )


def check_drop(figures: dict[str, Any], run_dir: Path, format: str = "onnx", fp32: str = "fp32", int8: str = "int8"):
    """Refuse (one ``error:`` line, nothing written) an int8 model more than :data:`MAX_DROP` below the float one."""
    drop = figures[f"{fp32}_val_acc"] - figures[f"{int8}_val_acc"]
    if drop > MAX_DROP + 1e-9:  # 1e-9: accuracies are ratios of counts, a drop of exactly one point passes
        raise ExportError(
            f"the int8 model loses {drop * 100:.2f} points of val accuracy ({figures[f'{fp32}_val_acc']:.4f} -> "
            f"{figures[f'{int8}_val_acc']:.4f} on {figures['val_images']} images; at most {MAX_DROP * 100:g} point "
            "is allowed): nothing was written. Try more calibration images (--calib), or export the float model: "
            f"graft export {run_dir} --format {format}"
        )


def float_figures(clf: Any, run_dir: Path, fp32: Runner, *, format: str, batch_size: int = 32) -> dict[str, Any]:
    """A float export (runner ``fp32``) over val beside graft's model, held to it (:func:`check_float`), and timed."""
    figures = val_figures(clf, run_dir, {"fp32": fp32}, batch_size=batch_size)
    check_float(figures, "fp32", run_dir, format)
    return figures | speeds({"fp32": fp32}, figures.pop("_timing_batch"))


def int8_figures(
    clf: Any,
    run_dir: Path,
    runners: Mapping[str, Runner],
    *,
    fp32_bytes: int,
    int8_bytes: int,
    format: str,
    batch_size: int = 32,
) -> dict[str, Any]:
    """The float and int8 models (runners ``fp32`` and ``int8``, the same runtime) over val beside graft's model:
    the float one held to graft's (:func:`check_float`), the int8 one to the float one (:func:`check_drop`), both
    timed in turns; with their speed and size ratios."""
    figures = val_figures(clf, run_dir, runners, batch_size=batch_size)
    check_float(figures, "fp32", run_dir, format)
    check_drop(figures, run_dir, format)
    figures |= speeds(runners, figures.pop("_timing_batch"))
    return figures | {
        "speedup": figures["int8_images_per_s"] / figures["fp32_images_per_s"],
        "speedup_batch1": figures["int8_images_per_s_batch1"] / figures["fp32_images_per_s_batch1"],
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "size_ratio": fp32_bytes / int8_bytes,
        "max_drop": MAX_DROP,
    }


def write_folder(
    folder: Path,
    model_name: str,
    files: Mapping[str, bytes],
    info: dict[str, Any],
    record: dict[str, Any],
    *,
    requirements: str,
    verification: Verification | None,
    run_dir: Path,
    script: Path | None = None,
) -> ExportResult:
    """Write a folder export: ``files`` (name -> bytes; the model and what it needs, e.g. OpenVINO's .bin; a name
    may hold a ``/`` for a package folder such as Core ML's), the sidecar ``<model_name>.json`` (``info`` with the
    model file's sha256 and size), ``export.json`` (``record`` plus the CPU and versions), the example script
    (``script``, default graft's torch-free ``predict.py``) and ``requirements.txt``. Call it only after every
    check passed: nothing is written before."""
    from graft.deploy import standalone_predict
    from graft.int8.backend import cpu_info

    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.atomic_write_bytes(path, data)
    model_path = folder / model_name
    main = files.get(model_name)
    if main is not None:
        info |= {"sha256": hashlib.sha256(main).hexdigest(), "bytes": len(main)}
    info["files"] = sorted(files)
    if verification is not None:
        info["verification"] = verification.to_dict()
    sidecar = sidecar_path(model_path)
    atomic.atomic_write_json(sidecar, info)
    record = {
        "model": model_name,
        "source_run": str(run_dir),
        **{k: v for k, v in record.items() if not k.startswith("_")},
        "bytes": sum(len(d) for d in files.values()),
        "cpu": cpu_info(),
        "versions": info.get("versions", {}) | {"graft": __version__},
    }
    atomic.atomic_write_json(folder / EXPORT_JSON, record)
    script = Path(standalone_predict.__file__) if script is None else script
    name = "predict.py" if script.name == "standalone_predict.py" else script.name
    atomic.atomic_write_bytes(folder / name, script.read_bytes())
    atomic.atomic_write_bytes(folder / "requirements.txt", requirements.encode())
    dummy = Verification(0, 0, 0.0, 0, 0, 0.0, [], "not run")
    return ExportResult(model_path, sidecar, info["export_format"], verification or dummy, info, figures=record)


def summary(f: dict[str, Any]) -> str:
    """One line of a folder export's ``export.json``, for the command line."""
    size = (
        f"{f['int8_bytes'] / 1e6:.1f} vs {f['fp32_bytes'] / 1e6:.1f} MB"
        if "int8_bytes" in f and "fp32_bytes" in f
        else f"{f.get('bytes', 0) / 1e6:.1f} MB"
    )
    if f.get("executed") is False:
        return f"not run here ({f.get('not_executed_because', 'its runtime does not run on this machine')}); {size}"
    t = f["timing"]
    at = f"batch {t['batch_size']}, {t['threads']} threads"
    if "int8_val_acc" in f:
        agree = f.get("top1_agreement", f.get("int8_top1_agreement", 0.0))
        return (
            f"int8 val acc {f['int8_val_acc']:.4f} (fp32 {f['fp32_val_acc']:.4f}, {f['val_images']} images, top-1 "
            f"agrees on {agree:.1%}); {f['int8_images_per_s']:.1f} vs {f['fp32_images_per_s']:.1f} images/s "
            f"({f['int8_images_per_s'] / f['fp32_images_per_s']:.2f}x, {at}); {size}"
        )
    return (
        f"val acc {f['fp32_val_acc']:.4f} (graft's model {f['graft_val_acc']:.4f}, {f['val_images']} images, top-1 "
        f"agrees on {f['fp32_top1_agreement']:.1%}); {f['fp32_images_per_s']:.1f} images/s ({at}), "
        f"{f['fp32_images_per_s_batch1']:.1f} at batch 1; {size}"
    )
