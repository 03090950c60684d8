"""Export a trained run for use without graft: ONNX (onnxruntime, any language) or TorchScript (libtorch).

    graft export runs/001-mobilenet_v2-freeze --format onnx          # model.onnx + model.onnx.json in the run

The exported network is the one ``graft predict`` runs (BatchNorm folded into the convolutions), float32, input
``input`` of shape ``(batch, 3, H, W)`` with a dynamic batch axis, output ``logits`` of shape ``(batch, classes)``
(softmax them for probabilities). Next to the file, ``<file>.json`` (the sidecar) holds the class names, the
preprocessing a caller must apply, the input and output names, the file's sha256 and the verification figures; the
same JSON is embedded in the file itself (ONNX metadata property ``graft``, TorchScript extra file ``graft.json``).

Every export is verified before it is kept: the written file is loaded back (onnxruntime for ONNX, ``torch.jit``
for TorchScript) and run on real images (by default the run's own val images) beside graft's PyTorch model, at
batch size 1 and at full batches; the largest absolute logit difference must stay within the tolerance (1e-4 for
float32) and the top-1 class must agree on every image whose two best logits are further apart than twice the
tolerance (closer ones are ties that noise within the tolerance may break either way). A failed verification
removes the files and raises :class:`ExportError`.

int8 runs (``graft quantize``, ``graft train --int8``, ``--mode qat``) are refused with the reason and what to
export instead. Their program does export to ONNX (QuantizeLinear/DequantizeLinear around float Conv and Gemm),
but no file can be verified to reproduce it: ONNX Runtime's int8 kernels round differently from the oneDNN
kernels of graft's compiled program. On a MobileNetV2 hymenoptera run, the two differed by up to 0.36 in logits
of magnitude ~2, and the compiled program and its own eager graph by 0.41, where a verified export holds to
1e-4. TorchScript would carry the eager graph, no closer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.core.config import ExportConfig, from_options
from graft.core.config.fields import takes_fields
from graft.deploy.formats import (
    DEFAULT_NAMES,
    ExportError,
    ExportResult,
    check_exportable,
    describe,
    inference_module,
    onnx_bytes,
    onnx_runner,
    sidecar_path,
    torchscript_bytes,
    torchscript_runner,
    verification_paths,
    verify,
)


@takes_fields(ExportConfig, "run")
def export(run_dir: str | os.PathLike[str], /, *, log: Callable[[str], None] = print, **options: Any) -> ExportResult:
    """Export a run as ONNX or TorchScript, write its JSON sidecar, and verify both against PyTorch.

    Args:
        run_dir: a run directory written by ``graft train``.
        log: where ``int8=True`` reports its steps.
        **options: the fields of :class:`graft.core.config.ExportConfig` (``graft export --help``), with its
            defaults: ``format`` (``onnx`` or ``torchscript``), ``out`` (the model file; default
            ``RUN/model.onnx`` or ``RUN/model.torchscript.pt``; the sidecar is ``OUT.json``), ``images`` (image
            files or folders to verify with; default: the run's val images, from ``data_report.json``),
            ``verify_images`` (at most this many, spread evenly; 0: all), ``tolerance`` (the largest allowed
            absolute difference between exported and PyTorch logits), ``opset``, ``batch_size`` (of the
            verification; batch size 1 is always checked as well), and ``int8``/``calib``
            (:mod:`graft.deploy.onnx_int8`).

    Raises:
        ExportError: the run is an int8 run, the exporter failed, no images to verify with, or the exported file
            does not match (the files are then removed).
    """
    return run_export(from_options(ExportConfig, options, run=run_dir), log=log)


def run_export(cfg: ExportConfig, *, log: Callable[[str], None] = print) -> ExportResult:
    """:func:`export` with an :class:`ExportConfig` (checked when it was made)."""
    from graft.inference.loading import load

    if cfg.format == "openvino":
        from graft.deploy import openvino

        return openvino.run_export(cfg, log=log)
    if cfg.format == "tflite":
        from graft.deploy import litert

        return litert.run_export(cfg, log=log)
    if cfg.format == "coreml":
        from graft.deploy import coreml

        return coreml.run_export(cfg, log=log)
    if cfg.int8:
        from graft.deploy.onnx_int8 import run_export_int8

        return run_export_int8(cfg, log=log)
    run_dir, format, out, batch_size, tolerance = cfg.run, cfg.format, cfg.out, cfg.batch_size, cfg.tolerance
    check_exportable(run_dir, format)
    paths, source = verification_paths(run_dir, cfg.images, cfg.verify_images)

    clf = load(run_dir, device="cpu")
    module = inference_module(clf)
    size = clf.preprocess.input_size
    path = Path(out) if out is not None else run_dir / DEFAULT_NAMES[format]
    if path.is_dir():
        path = path / DEFAULT_NAMES[format]
    path.parent.mkdir(parents=True, exist_ok=True)
    info = describe(clf, format, path)

    if format == "onnx":
        data, info["opset"] = onnx_bytes(module, size, cfg.opset, info)
        runner: Callable[[Any], Any] = onnx_runner(data)
    else:
        data = torchscript_bytes(module, size, info)
        runner = torchscript_runner(data)

    verification = verify(clf, runner, paths, tolerance=tolerance, batch_size=batch_size, source=source)
    if not verification.passed:
        raise ExportError(
            f"the {format} export of {run_dir} does not reproduce the PyTorch model: {verification.format()}. "
            "Nothing was written; report this with the run's model.json (a --tolerance above 1e-4 is only right "
            "for reduced-precision models)."
        )
    atomic.atomic_write_bytes(path, data)
    info |= {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "verification": verification.to_dict()}
    sidecar = sidecar_path(path)
    atomic.atomic_write_json(sidecar, info)
    return ExportResult(path=path, sidecar=sidecar, format=format, verification=verification, info=info)
