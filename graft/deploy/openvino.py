"""``graft export RUN --format openvino [--int8]``: an OpenVINO IR folder for Intel CPUs, GPUs and NPUs.

    graft export runs/001-mobilenet_v2-freeze --format openvino           # RUN/openvino/
    graft export runs/001-mobilenet_v2-freeze --format openvino --int8    # RUN/openvino-int8/

The network ``graft predict`` runs (BatchNorm folded, float32) is converted by OpenVINO's PyTorch frontend
(``openvino.convert_model`` on the module itself, traced with an example batch at the run's input size, batch axis
dynamic). Converting the module rather than graft's ONNX file keeps the ``openvino`` extra free of the ONNX
exporter, and both routes give the same IR (identical logits on hymenoptera with MobileNetV2). The IR is saved with
float32 weights (``compress_to_fp16=False``: OpenVINO would halve them by default), and the sidecar's JSON is
embedded in the IR's ``rt_info`` under ``graft``.

The float IR is loaded back by the very function ``predict.py`` uses (compiled for the CPU with f32 inference
precision) and verified against graft's PyTorch model at logit level on the run's val images (``--tolerance``,
1e-4 by default; OpenVINO's f32 kernels stay within a few 1e-6), then over the whole val split: top-1 and
accuracy within one image of graft's (:func:`graft.deploy.bundle.check_float`).

``--int8``: NNCF's post-training quantization (``nncf.quantize``; the mixed preset: symmetric weights, asymmetric
activations; the full bias correction) calibrated on ``--calib`` of the run's training images, one image per
calibration sample. The int8 IR and the float one run in
OpenVINO over the val split; an int8 model more than one point below the float one is refused (nothing written).
Both are timed in OpenVINO on the same batch with the same threads.

The folder holds ``model.xml`` + ``model.bin``, ``model.xml.json`` (the sidecar), ``export.json`` (figures),
``predict.py`` (``python predict.py IMAGE...``: openvino, numpy and Pillow, no torch) and ``requirements.txt``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.core.config import ExportConfig
from graft.deploy import bundle
from graft.deploy.formats import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    ExportResult,
    check_exportable,
    describe,
    inference_module,
    reason,
    verification_paths,
    verify,
)

MODEL = "model.xml"
WEIGHTS = "model.bin"
REQUIREMENTS = "openvino\nnumpy\npillow\n"
FORMAT = "graft-openvino/1"
FORMAT_INT8 = "graft-openvino-int8/1"
#: What OpenVINO is told to compute float layers in (predict.py's runner says the same).
PRECISION = "f32"


def run_export(cfg: ExportConfig, *, log: Callable[[str], None] = print) -> ExportResult:
    """Export ``cfg.run`` as an OpenVINO folder (float, or int8 with ``cfg.int8``); see the module's doc.

    Raises:
        DependencyError: openvino (and for ``--int8`` nncf) is not installed.
        ExportError: an int8 or multi-label run, the conversion failed, the IR does not reproduce graft's model,
            or the int8 model loses more than one point (nothing written in every case).
    """
    from graft.inference.loading import load

    bundle.require("openvino", int8=cfg.int8)
    no_telemetry()
    run_dir = cfg.run
    check_exportable(run_dir, "openvino")
    paths, source = verification_paths(run_dir, cfg.images, cfg.verify_images)
    clf = load(run_dir, device="cpu")
    if getattr(clf, "multilabel", False):  # the val checks and predict.py are single-label (softmax, top-1)
        raise ExportError(
            f"--format openvino exports single-label runs; {run_dir} is multi-label: export it with --format onnx"
        )
    folder = Path(cfg.out) if cfg.out is not None else bundle.default_folder(run_dir, "openvino", cfg.int8)
    info = describe(clf, "openvino", folder / MODEL)
    info["versions"] |= {"openvino": _version()}
    info["runtime"] = {"device": "CPU", "inference_precision_hint": PRECISION}

    with tempfile.TemporaryDirectory(prefix="graft-openvino-") as tmp:
        fp32_model = convert(inference_module(clf), clf.preprocess.input_size, info)
        fp32_files, fp32 = save(fp32_model, Path(tmp, "fp32"), info)
        verification = verify(
            clf, lambda b: fp32(b.numpy()), paths, tolerance=cfg.tolerance, batch_size=cfg.batch_size, source=source
        )
        if not verification.passed:
            raise ExportError(
                f"the OpenVINO export of {run_dir} does not reproduce the PyTorch model: {verification.format()}. "
                "Nothing was written; report this with the run's model.json, meanwhile export --format onnx"
            )
        log(f"OpenVINO IR (f32) {verification.format()}")
        if cfg.int8:
            files, figures = _int8(cfg, clf, fp32_model, (fp32_files, fp32), info, Path(tmp), log)
        else:
            files, figures = _float(clf, run_dir, fp32_files, fp32)
    figures["fp32_verification"] = verification.to_dict()
    _describe_weights(info, files)
    return bundle.write_folder(
        folder,
        MODEL,
        files,
        info,
        figures,
        requirements=REQUIREMENTS,
        verification=verification,
        run_dir=run_dir,
    )


def _float(clf: Any, run_dir: Path, files: dict[str, bytes], fp32: bundle.Runner) -> tuple[dict, dict[str, Any]]:
    """The float IR over val beside graft's model (refused if more than one image differs), then its speed."""
    figures = bundle.float_figures(clf, run_dir, fp32, format="openvino")
    record = {"format": FORMAT, "int8": False, "executed": True, **figures, "fp32_bytes": _size(files)}
    return files, record


def _int8(
    cfg: ExportConfig,
    clf: Any,
    fp32_model: Any,
    fp32_saved: tuple[dict[str, bytes], bundle.Runner],
    info: dict[str, Any],
    tmp: Path,
    log: Callable[[str], None],
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """NNCF's int8 IR, checked against the float IR on val (at most one point lost), and both timed."""
    calibration = bundle.calibration_batches(clf, cfg.run, cfg.calib, cfg.batch_size)
    n_calib = sum(len(b) for b in calibration)
    log(f"quantizing with NNCF (calibrated on {n_calib} training images)")
    info["quantized"] = quantization_info(n_calib)
    int8_model = quantize(fp32_model, calibration)
    fp32_files, fp32 = fp32_saved
    int8_files, int8 = save(int8_model, Path(tmp, "int8"), info)
    runners = {"fp32": fp32, "int8": int8}
    figures = bundle.int8_figures(
        clf, cfg.run, runners, fp32_bytes=_size(fp32_files), int8_bytes=_size(int8_files), format="openvino"
    )
    record = {
        "format": FORMAT_INT8,
        "int8": True,
        "executed": True,
        **figures,
        "calibration_images": n_calib,
        "quantization": info["quantized"],
    }
    return int8_files, record


# ----------------------------------------------------------------------------------------------------------------
# OpenVINO and NNCF


def no_telemetry() -> None:
    """Keep OpenVINO and NNCF from sending usage reports (they do by default, to Google Analytics, unless the user
    ran ``opt_in_out --opt_out``; ``import openvino`` alone sends one): graft sends nothing anywhere. Both fall back
    to their own no-op stand-ins when ``openvino_telemetry`` cannot be imported, which a ``None`` entry in
    ``sys.modules`` makes so. Called before graft first imports openvino; where the process imported it already,
    it has reported already and this changes nothing."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


def convert(module: Any, size: int, info: dict[str, Any]) -> Any:
    """The module as an OpenVINO model: input ``input`` of shape (?, 3, size, size), output ``logits``."""
    import openvino as ov
    import torch

    example = torch.randn(2, 3, size, size)
    try:
        with bundle.quiet("nncf"), torch.no_grad():
            model = ov.convert_model(module, example_input=example, input=[(-1, 3, size, size)])
    except Exception as e:
        raise ExportError(
            f"OpenVINO could not convert {info['arch']}: {reason(e)} -- export --format onnx "
            "and convert that file with OpenVINO's ovc"
        ) from None
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return model


def save(model: Any, folder: Path, info: dict[str, Any]) -> tuple[dict[str, bytes], bundle.Runner]:
    """``model.xml`` + ``model.bin`` (float32 weights kept, ``info`` in the IR's rt_info) in ``folder``, their
    bytes, and the model loaded back from them as predict.py loads it."""
    import openvino as ov

    from graft.deploy.standalone_predict import openvino_runner

    folder.mkdir(parents=True, exist_ok=True)
    model.set_rt_info(json.dumps(info), ["graft"])
    with bundle.quiet("nncf"):
        ov.save_model(model, folder / MODEL, compress_to_fp16=False)
    return _files(folder), openvino_runner(folder / MODEL, info)


def quantize(model: Any, calibration: list[Any]) -> Any:
    """NNCF's post-training int8 quantization of the float OpenVINO model; one calibration sample per image."""
    samples = [batch[i : i + 1] for batch in calibration for i in range(len(batch))]
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    try:
        with bundle.quiet("nncf"):
            import nncf  # its import logs a line at INFO: inside _quiet too

            nncf_logger.setLevel(logging.ERROR)
            # asymmetric activations (the mixed preset) and the full bias correction: with NNCF's defaults
            # (symmetric, fast correction) frozen hymenoptera runs lost 2 of 153 val images (MobileNetV2 and
            # EfficientNet-Lite0, 128 calibration images), with these 0 and 1
            return nncf.quantize(
                model,
                nncf.Dataset(samples),
                subset_size=len(samples),
                preset=nncf.QuantizationPreset.MIXED,
                fast_bias_correction=False,
            )
    except Exception as e:
        raise ExportError(
            f"NNCF could not quantize the model: {reason(e)} -- export --format openvino without --int8"
        ) from None
    finally:
        nncf_logger.setLevel(level or logging.INFO)  # NOTSET before NNCF's first import, which sets INFO


def quantization_info(n_calib: int) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "tool": f"nncf {version('nncf')} quantize (post-training)",
        "preset": "mixed (symmetric weights, asymmetric activations)",
        "bias_correction": "full (fast_bias_correction=False)",
        "weights": "int8, per output channel",
        "activations": "8-bit, per tensor (unsigned after ReLU)",
        "calibration_images": n_calib,
        "calibration_split": "train",
    }


def _files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in (MODEL, WEIGHTS)}


def _size(files: dict[str, bytes]) -> int:
    return sum(len(data) for data in files.values())


def _describe_weights(info: dict[str, Any], files: dict[str, bytes]) -> None:
    """The sidecar's hash is model.xml's (the graph); the weights file gets its own."""
    data = files[WEIGHTS]
    info["weights_file"] = {"name": WEIGHTS, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _version() -> str:
    from importlib.metadata import version

    return version("openvino")
