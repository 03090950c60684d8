"""The configs of the commands that make a trained run smaller or portable: ``graft quantize`` (an int8 run) and
``graft export`` (an ONNX or TorchScript file, or an int8 ONNX folder). No heavy imports."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from graft.core.config.data import BATCH_SIZE
from graft.core.config.fields import (
    ABOVE_0,
    AT_LEAST_0,
    AT_LEAST_1,
    RUN,
    Rule,
    check_all,
    check_fields,
    opt,
    optional_path,
)
from graft.core.config.model import ACTIVATION_BITS, CALIB, ActivationBits

ExportFormat = Literal["onnx", "torchscript", "openvino", "tflite", "coreml"]
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript", "openvino", "tflite", "coreml")
#: The formats with an int8 path (``--int8``).
INT8_FORMATS: tuple[str, ...] = ("onnx", "openvino", "tflite", "coreml")


@dataclass(kw_only=True)
class QuantizeConfig:
    """``graft quantize``: post-training int8 quantization of a float run into RUN-int8 (torchao PT2E; CPU),
    with quantization.json comparing accuracy, size and speed."""

    run: Path = opt(
        RUN, "float run directory written by graft train", example="graft quantize runs/001-mobilenet_v2-freeze"
    )
    calib: int = opt(CALIB, "training images to calibrate the int8 activation ranges on")
    activation_bits: ActivationBits = opt(
        ACTIVATION_BITS,
        "int8 activation bits: auto is 8 on CPUs with VNNI (or AMX), else 7 (8 overflows their kernels)",
    )
    name: str | None = opt(None, "folder of the int8 run, next to RUN (default: RUN-int8)")
    exist_ok: bool = opt(False, "replace the files of an existing int8 run folder")
    json: bool = opt(False, "print quantization.json")

    def __post_init__(self) -> None:
        check_fields(self)
        self.run = Path(self.run)


@dataclass(kw_only=True)
class ExportConfig:
    """``graft export``: write a run as ONNX, TorchScript, OpenVINO, TFLite (LiteRT) or Core ML plus a JSON sidecar
    (classes, preprocessing), verified against PyTorch on real images where the format's runtime runs here."""

    run: Path = opt(RUN, example="graft export runs/001-mobilenet_v2-freeze")
    format: ExportFormat = opt(
        "onnx",
        "file format: onnx, torchscript (files in RUN), or openvino, tflite, coreml (a folder RUN/FORMAT[-int8] with "
        "predict.py)",
        check=Rule(", ".join(EXPORT_FORMATS), lambda v: v in EXPORT_FORMATS),
    )
    out: Path | None = opt(
        None,
        "file to write (default: RUN/model.onnx or RUN/model.torchscript.pt; the sidecar is OUT.json), or the folder "
        "of a folder export (--int8, openvino, tflite, coreml)",
    )
    # in Python also a list of image files or folders
    images: Path | Sequence[str | os.PathLike[str]] | None = opt(
        None, "images to verify with (default: the run's val images)"
    )
    verify_images: int = opt(
        256,
        "verify on at most this many images, spread evenly (0: all)",
        check=Rule(AT_LEAST_0.must, AT_LEAST_0.ok, "; 0 verifies on all images"),
    )
    tolerance: float = opt(
        1e-4, "largest allowed absolute difference between exported and PyTorch logits", check=ABOVE_0
    )
    opset: int | None = opt(None, "ONNX opset (default: the exporter's)", check=AT_LEAST_1)
    json: bool = opt(False, "print the sidecar as JSON")
    int8: bool = opt(
        False,
        "quantize to int8 with the format's own tool (onnx: ONNX Runtime static QDQ; openvino: NNCF; tflite: "
        "full-integer; coreml: int8 weights) into a folder (--out, default RUN/FORMAT-int8); refused if val "
        "accuracy drops more than 1 point",
    )
    calib: int = opt(CALIB, "--int8: training images to calibrate the activation ranges on")
    batch_size: int = opt(
        BATCH_SIZE, "images per verification batch (batch size 1 is always checked as well)", cli=False
    )

    def __post_init__(self) -> None:
        check_fields(self)
        self.run = Path(self.run)
        self.out = optional_path(self.out)
        if isinstance(self.images, str | os.PathLike):
            self.images = Path(self.images)
        elif self.images is not None:
            self.images = [Path(p) for p in self.images]
        check_all(
            [(not self.int8 or self.format in INT8_FORMATS, f"--int8 has no {self.format} path: use --format onnx")]
        )
