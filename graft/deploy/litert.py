"""``graft export RUN --format tflite [--int8]``: a TFLite (LiteRT) folder for phones, microcontrollers' bigger
siblings and any machine with the LiteRT interpreter (``ai-edge-litert``), no torch.

The float run's inference network (BatchNorm folded, the one ``graft predict`` runs) is converted by
``litert_torch`` with a fixed input of one image, float32 NCHW ``(1, 3, S, S)`` like graft's other exports (the
interpreter's tensors have a fixed shape; predict.py runs a batch image by image). The file is loaded back by the
LiteRT interpreter (XNNPACK on the CPU) and checked on the run's images: logits within ``--tolerance`` of graft's
PyTorch model (1e-4 holds: the interpreter differs by ~3e-6 on MobileNetV2), and over the val split, top-1 and
accuracy within one image of graft's (:func:`graft.deploy.bundle.check_float`).

``--int8`` is full-integer quantization: torchao's PT2E with litert_torch's quantizer (weights int8 symmetric per
output channel, activations int8 per tensor from histograms over ``--calib`` of the run's training images, graft's
eval transform; a convolution's ReLU6 is quantized fused with it, its range taken after the clamp), converted to
int8 TFLite kernels with int8 input and output tensors (their scale and zero point are in the sidecar; predict.py
quantizes the float image with them). The residual additions stay float between a DEQUANTIZE and a QUANTIZE
(litert_torch's quantizer leaves them unannotated; quantized too, MobileNetV2 loses two val images). The int8
model is compared with the float TFLite model in the same interpreter over the val split; more than one point lost
and nothing is written.

The folder (default ``RUN/tflite`` or ``RUN/tflite-int8``) holds ``model.tflite``, ``model.tflite.json`` (classes,
preprocessing, input and output tensors), ``export.json`` (the figures), ``predict.py`` and ``requirements.txt``
(ai-edge-litert, numpy, pillow). Multi-label runs are refused: predict.py and the val comparison are single-label.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.core.config import ExportConfig
from graft.deploy import bundle
from graft.deploy.formats import (
    ExportError,
    ExportResult,
    Verification,
    check_exportable,
    describe,
    inference_module,
    reason,
    verification_paths,
    verify,
)

FORMAT = "tflite"
MODEL = "model.tflite"
RECORD_FORMAT = "graft-tflite/1"
REQUIREMENTS = "ai-edge-litert\nnumpy\npillow\n"
#: Loggers of the converter's Python side (torch.export, absl), kept at ERROR while it runs.


def run_export(cfg: ExportConfig, *, log: Callable[[str], None] = print) -> ExportResult:
    """Convert, check and write a run as a TFLite folder (the module's doc says what and how)."""
    from graft.inference.loading import load

    bundle.require(FORMAT, int8=cfg.int8)
    run_dir = cfg.run
    check_exportable(run_dir, FORMAT)
    paths, source = verification_paths(run_dir, cfg.images, cfg.verify_images)
    clf = load(run_dir, device="cpu")
    if getattr(clf, "multilabel", False):
        raise ExportError(
            f"--format tflite exports single-label runs (its predict.py and the val check are single-label); "
            f"{run_dir} is multi-label: graft export {run_dir} --format onnx"
        )
    folder = Path(cfg.out) if cfg.out is not None else bundle.default_folder(run_dir, FORMAT, cfg.int8)
    info = describe(clf, FORMAT, folder / MODEL)
    info["versions"] |= _versions()
    module, size = inference_module(clf), clf.preprocess.input_size

    log(f"converting to TFLite with litert_torch (input 1x3x{size}x{size})")
    with tempfile.TemporaryDirectory(prefix="graft-tflite-") as tmp:
        fp32 = convert(module, size)
        fp32_run = runner(fp32, Path(tmp, "fp32.tflite"))
        verification = verify(
            clf, lambda b: fp32_run(b.numpy()), paths, tolerance=cfg.tolerance, batch_size=cfg.batch_size,
            source=source,
        )  # fmt: skip
        if not verification.passed:
            raise ExportError(
                f"the TFLite export of {run_dir} does not reproduce the PyTorch model: {verification.format()}. "
                "Nothing was written; report this with the run's model.json, meanwhile export --format onnx"
            )
        log(f"float TFLite model {verification.format()}")
        if not cfg.int8:
            return _write_float(clf, cfg, folder, fp32, fp32_run, info, verification)
        calibration = bundle.calibration_batches(clf, run_dir, cfg.calib, cfg.batch_size)
        n_calib = sum(len(b) for b in calibration)
        log(f"quantizing with litert_torch PT2E (int8, calibrated on {n_calib} training images)")
        int8 = quantize(module, size, calibration)
        int8_run = runner(int8, Path(tmp, "int8.tflite"))
        return _write_int8(clf, cfg, folder, (fp32, fp32_run), (int8, int8_run), info, verification, n_calib)


def _write_float(
    clf: Any,
    cfg: ExportConfig,
    folder: Path,
    data: bytes,
    run: bundle.Runner,
    info: dict[str, Any],
    verification: Verification,
) -> ExportResult:
    figures = bundle.float_figures(clf, cfg.run, run, format=FORMAT, batch_size=cfg.batch_size)
    info["input"], info["output"] = _tensor_info(data, info)
    record = {
        "format": RECORD_FORMAT,
        "int8": False,
        **figures,
        "executed": True,
        "runtime": "LiteRT interpreter (XNNPACK), one image at a time",
        "verification": verification.to_dict(),
    }
    return bundle.write_folder(
        folder,
        MODEL,
        {MODEL: data},
        info,
        record,
        requirements=REQUIREMENTS,
        verification=verification,
        run_dir=cfg.run,
    )


def _write_int8(
    clf: Any,
    cfg: ExportConfig,
    folder: Path,
    fp32: tuple[bytes, bundle.Runner],
    int8: tuple[bytes, bundle.Runner],
    info: dict[str, Any],
    verification: Verification,
    n_calib: int,
) -> ExportResult:
    runners = {"fp32": fp32[1], "int8": int8[1]}
    figures = bundle.int8_figures(
        clf,
        cfg.run,
        runners,
        fp32_bytes=len(fp32[0]),
        int8_bytes=len(int8[0]),
        format=FORMAT,
        batch_size=cfg.batch_size,
    )
    quantization = quantization_info(n_calib)
    info["quantized"] = quantization
    info["input"], info["output"] = _tensor_info(int8[0], info)
    record = {
        "format": RECORD_FORMAT,
        "int8": True,
        **figures,
        "calibration_images": n_calib,
        "quantization": quantization,
        "executed": True,
        "runtime": "LiteRT interpreter (XNNPACK), one image at a time",
        "fp32_verification": verification.to_dict(),
    }
    return bundle.write_folder(
        folder, MODEL, {MODEL: int8[0]}, info, record, requirements=REQUIREMENTS, verification=None, run_dir=cfg.run
    )


# ----------------------------------------------------------------------------------------------------------------
# conversion


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """:func:`graft.deploy.bundle.quiet` with litert_torch's progress tree off (it prints one unless
    ``LITERT_TORCH_SHOW_PROGRESS`` says no) and torch.export's, absl's and jax's loggers quiet."""
    env = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with bundle.quiet("torch", "absl", "jax"):
            yield
    finally:
        if env is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = env


def convert(module: Any, size: int, quant_config: Any = None) -> bytes:
    """The TFLite flatbuffer of ``module`` for one float32 NCHW image of ``size`` pixels."""
    import torch

    example = torch.zeros(1, 3, size, size)
    try:
        with quiet():
            import litert_torch

            model = litert_torch.convert(module, (example,), quant_config=quant_config)
            with tempfile.TemporaryDirectory(prefix="graft-litert-") as tmp:
                path = Path(tmp, MODEL)
                model.export(str(path))
                return path.read_bytes()
    except Exception as e:
        raise ExportError(
            f"litert_torch could not convert the model: {reason(e)} -- export --format onnx meanwhile"
        ) from None


def quantize(module: Any, size: int, calibration: Sequence[Any]) -> bytes:
    """Full-integer TFLite of ``module``: PT2E int8 (litert_torch's symmetric quantizer, weights per channel)
    calibrated on ``calibration`` (float32 NCHW numpy batches), then converted."""
    import torch

    with quiet():
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = _clamp_fused(PT2EQuantizer)().set_global(get_symmetric_quantization_config(is_per_channel=True))
        # a dynamic batch axis while calibrating: whole batches through the observers, not one image per call
        batch = torch.export.Dim("batch", min=1, max=4096)
        try:
            graph = torch.export.export(module, (torch.zeros(2, 3, size, size),), dynamic_shapes=({0: batch},))
            prepared = prepare_pt2e(graph.module(), quantizer)
            with torch.no_grad():
                for x in calibration:
                    prepared(torch.from_numpy(x))
            converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
        except Exception as e:
            raise ExportError(f"PT2E int8 quantization failed: {reason(e)}") from None
    return convert(converted, size, QuantConfig(pt2e_quantizer=quantizer))


def _clamp_fused(base: type) -> type:
    """``base`` (litert_torch's PT2EQuantizer) with a convolution's ReLU6 quantized as one op with it.

    The quantizer fuses conv + ReLU but leaves ReLU6 (``hardtanh``) sharing the convolution's output observer: the
    range is then calibrated before the clamp, so the int8 steps are spread over negative values and values above 6
    that the clamp throws away. Observing after the clamp is what TFLite runs (a conv with a fused RELU6 and the
    output scale of the clamped tensor), and it is what keeps MobileNetV2 and EfficientNet-Lite within one val image
    of the float model (without it they lose two and three of 153)."""
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
    convs = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)

    class ClampFusedQuantizer(base):  # type: ignore[misc,valid-type]
        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in clamps:
                    continue
                conv = node.args[0]
                annotation = getattr(conv, "meta", {}).get("quantization_annotation")
                if conv.target not in convs or annotation is None or len(conv.users) != 1:
                    continue
                output, annotation.output_qspec = annotation.output_qspec, None
                node.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=output, _annotated=True)
            return model

    return ClampFusedQuantizer


def runner(data: bytes, path: Path) -> bundle.Runner:
    """The TFLite model in the LiteRT interpreter, as predict.py runs it (written to ``path`` first)."""
    from graft.deploy.standalone_predict import litert_runner

    atomic.atomic_write_bytes(path, data)
    with quiet():  # the interpreter logs its XNNPACK delegate
        return litert_runner(path, {})


def _tensor_info(data: bytes, info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sidecar's input and output as the file has them: one image (the interpreter's shapes are fixed), and an
    integer tensor's dtype, scale and zero point."""
    with quiet():
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=data)
    details = (interpreter.get_input_details()[0], interpreter.get_output_details()[0])
    described = []
    for detail, base in zip(details, (info["input"], info["output"]), strict=True):
        entry = dict(base, name=detail["name"], shape=[1, *base["shape"][1:]], dtype=detail["dtype"].__name__)
        if entry["dtype"] != "float32":
            scale, zero = detail["quantization"]
            entry["quantization"] = {"scale": float(scale), "zero_point": int(zero), "real": "(q - zero_point) * scale"}
        described.append(entry)
    return described[0], described[1]


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"litert_torch": version("litert-torch"), "ai_edge_litert": version("ai-edge-litert")}


def quantization_info(n_calib: int) -> dict[str, Any]:
    return {
        "tool": f"litert_torch {_versions()['litert_torch']} PT2E (torchao prepare_pt2e/convert_pt2e)",
        "weights": "int8, symmetric, per output channel",
        "activations": "int8, per tensor (histogram observer); a convolution's ReLU6 observed after the clamp",
        "io": "int8 input and output tensors (scale and zero point in the sidecar)",
        "float_ops": "residual additions (between DEQUANTIZE and QUANTIZE)",
        "calibration_images": n_calib,
        "calibration_split": "train",
    }
