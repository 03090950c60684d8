"""``graft export RUN --format onnx --int8``: an int8 ONNX model for machines without torch.

The float run's network is exported to ONNX and verified against PyTorch exactly as ``graft export`` does, then
quantized by ONNX Runtime's static quantization (``onnxruntime.quantization.quantize_static``): QDQ format,
weights int8 per output channel with a 7-bit range (``reduce_range``: the u8s8 kernels of CPUs without VNNI
overflow with full 8-bit weights), activations uint8 per tensor, each activation's range the 99.99th percentile
of its histogram over ``calib`` of the run's training images (graft's eval transform; min/max ranges lost two
of 153 val images on MobileNetV2). The int8 model is then compared with the float one in ONNX Runtime over the
run's val split: if its accuracy is more than one point lower, nothing is written and the export ends in an
``error:`` line. Both are timed in ONNX Runtime on the same batch with the same threads.

The export is a folder (default ``RUN/onnx-int8/``) that runs without graft or torch:

- ``model.onnx``: the int8 model (the sidecar's JSON is embedded as metadata property ``graft``);
- ``model.onnx.json``: class names, preprocessing, input/output names, sha256 (as for every graft export);
- ``export.json``: fp32 and int8 val accuracy, images/s, sizes, the quantization settings, the CPU;
- ``predict.py``: ``python predict.py IMAGE...`` (onnxruntime, numpy, Pillow), graft's preprocessing;
- ``requirements.txt``: those three packages.

This is ONNX Runtime's quantization of a *float* run; int8 runs of graft (``graft quantize``, ``--int8``,
``--mode qat``) are still refused by ``graft export`` (see :mod:`graft.deploy.export`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.core.config import ExportConfig, from_options
from graft.core.config.fields import takes_fields
from graft.deploy.bundle import (
    calibration_batches,
    cores,
    int8_figures,
    write_folder,
)
from graft.deploy.formats import (
    ExportError,
    ExportResult,
    check_exportable,
    describe,
    inference_module,
    onnx_bytes,
    onnx_runner,
    reason,
    verification_paths,
    verify,
)

DEFAULT_DIR = "onnx-int8"
CALIB_PERCENTILE = 99.99
REQUIREMENTS = "onnxruntime\nnumpy\npillow\n"


@takes_fields(ExportConfig, "run")
def export_int8(
    run_dir: str | os.PathLike[str], /, *, log: Callable[[str], None] = print, **options: Any
) -> ExportResult:
    """Export a float run as an int8 ONNX folder (see the module's doc); return what was written. ``options`` are
    the fields of :class:`graft.core.config.ExportConfig` (``out`` is the folder here; ``int8`` is implied).

    Raises:
        ExportError: the float export does not reproduce PyTorch, the training or val images are missing, or the
            int8 model's val accuracy is more than :data:`graft.deploy.bundle.MAX_DROP` below the float model's
            (nothing written).
    """
    return run_export_int8(from_options(ExportConfig, options | {"int8": True}, run=run_dir), log=log)


def run_export_int8(cfg: ExportConfig, *, log: Callable[[str], None] = print) -> ExportResult:
    """:func:`export_int8` with an :class:`ExportConfig`."""
    from graft.inference.loading import load

    run_dir, out, calib, batch_size, opset = cfg.run, cfg.out, cfg.calib, cfg.batch_size, cfg.opset
    images, verify_images, tolerance = cfg.images, cfg.verify_images, cfg.tolerance
    check_exportable(run_dir, "onnx")
    paths, source = verification_paths(run_dir, images, verify_images)
    clf = load(run_dir, device="cpu")
    if getattr(clf, "multilabel", False):  # the val comparison and predict.py are single-label (softmax, top-1)
        raise ExportError(f"--int8 exports single-label runs; {run_dir} is multi-label: export it without --int8")
    folder = Path(out) if out is not None else run_dir / DEFAULT_DIR
    model_path = folder / "model.onnx"
    info = describe(clf, "onnx", model_path)
    fp32, info["opset"] = onnx_bytes(inference_module(clf), clf.preprocess.input_size, opset, info)
    verification = verify(clf, onnx_runner(fp32), paths, tolerance=tolerance, batch_size=batch_size, source=source)
    if not verification.passed:
        raise ExportError(
            f"the float ONNX export of {run_dir} does not reproduce the PyTorch model: "
            f"{verification.format()}. Nothing was written."
        )
    log(f"float ONNX model {verification.format()}")

    calibration = calibration_batches(clf, run_dir, calib, batch_size)
    n_calib = sum(len(b) for b in calibration)
    log(f"quantizing with ONNX Runtime (QDQ, calibrated on {n_calib} training images)")
    int8 = quantize(fp32, calibration)
    figures = compare(clf, run_dir, fp32, int8, batch_size=batch_size)
    figures["calibration_images"] = n_calib
    info["quantized"] = quantization_info(n_calib)
    record = {
        "format": "graft-onnx-int8/1",
        **figures,
        "quantization": info["quantized"],
        "fp32_verification": verification.to_dict(),
    }
    files = {model_path.name: with_metadata(int8, info)}
    return write_folder(
        folder,
        model_path.name,
        files,
        info,
        record,
        requirements=REQUIREMENTS,
        verification=verification,
        run_dir=run_dir,
    )


def with_metadata(data: bytes, info: dict[str, Any]) -> bytes:
    """The ONNX model with the sidecar's JSON embedded (metadata property ``graft``), as every graft ONNX file."""
    import onnx

    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "graft", json.dumps(info)
    return proto.SerializeToString()


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, batches: Sequence[Any], input_name: str) -> None:
        self.batches, self.input_name = batches, input_name
        self.it = iter(batches)

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self.it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self.it = iter(self.batches)


def quantize(fp32: bytes, calibration: Sequence[Any]) -> bytes:
    """The float ONNX model quantized by ONNX Runtime (static, QDQ; settings in the module's doc)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from graft.deploy.formats import INPUT_NAME

    quiet = logging.getLogger()
    level = quiet.level
    with tempfile.TemporaryDirectory(prefix="graft-ort-int8-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        atomic.atomic_write_bytes(src, fp32)
        quiet.setLevel(logging.ERROR)  # ONNX Runtime's tools log each step at INFO/WARNING
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # ... and print the calibration's progress
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                quantize_static(
                    str(pre),
                    str(dst),
                    _Reader(calibration, INPUT_NAME),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    reduce_range=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Percentile,
                    extra_options={"CalibPercentile": CALIB_PERCENTILE},
                )
        except Exception as e:
            raise ExportError(f"ONNX Runtime could not quantize the model: {reason(e)}") from None
        finally:
            quiet.setLevel(level)
        return dst.read_bytes()


def session(data: bytes, threads: int) -> Any:
    """A CPU ONNX Runtime session with ``threads`` intra-op threads (the same for both models when timed)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _runner(s: Any) -> Callable[[Any], Any]:
    from graft.deploy.formats import INPUT_NAME

    return lambda batch: s.run(None, {INPUT_NAME: batch})[0]


def compare(clf: Any, run_dir: Path, fp32: bytes, int8: bytes, *, batch_size: int = 32) -> dict[str, Any]:
    """Both models in ONNX Runtime over the run's val split beside graft's PyTorch model, checked and timed
    (:func:`graft.deploy.bundle.int8_figures`)."""
    threads = cores()
    runners = {"fp32": _runner(session(fp32, threads)), "int8": _runner(session(int8, threads))}
    figures = int8_figures(
        clf, run_dir, runners, fp32_bytes=len(fp32), int8_bytes=len(int8), format="onnx", batch_size=batch_size
    )
    return figures | {
        # the float model is graft's to 1e-4 (verified before quantizing): agreement with it is agreement with graft
        "top1_agreement": figures["int8_top1_agreement"],
        "max_probability_diff": figures["int8_max_probability_diff"],
    }


def quantization_info(n_calib: int) -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "tool": f"onnxruntime {ort.__version__} quantize_static",
        "format": "QDQ",
        "weights": "int8, per output channel, 7-bit range (reduce_range)",
        "activations": "uint8, per tensor",
        "ranges": f"{CALIB_PERCENTILE}th percentile of each activation's histogram",
        "calibration_images": n_calib,
        "calibration_split": "train",
    }
