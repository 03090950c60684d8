"""``graft export RUN --format coreml [--int8]``: a Core ML model package for Apple devices, checked, not run.

The run's network (the one ``graft predict`` runs, BatchNorm folded) is traced with ``torch.jit.trace`` and
converted by coremltools to an ML program (``mlprogram``, iOS 16 / macOS 13 or later) whose input is an image and
whose outputs are a classifier's: ``classLabel`` (the best class) and ``classLabel_probs`` (class -> probability).
Graft's normalization is inside the model: the image input scales each 8-bit pixel by 1/255 and adds -mean per
channel (Core ML's image input has one scale for all channels and a bias per channel), and the model's first op
multiplies each channel by 1/std before the network; a softmax after it makes the probabilities. The resize of the
shorter side and the centre crop stay the caller's (Vision's ``VNCoreMLRequest`` with
``imageCropAndScaleOption = .centerCrop`` does them; ``predict_coreml.py`` does them with Pillow).

The float model keeps float32 weights and float32 compute precision (coremltools' default would be float16).
``--int8`` quantizes its weights to int8 (``linear_quantize_weights``, symmetric, per output channel); activations
stay float: about 4x smaller.

Core ML models run only on Apple platforms (coremltools has no runtime for Linux or Windows), so the export is not
run by Core ML here. What graft checks instead, on the package as written (loaded back with ``skip_model_load``;
:mod:`graft.deploy.coreml_spec`): one image input ``image`` of S x S RGB; the classifier outputs with exactly the
run's classes in order; the preprocessing ops' scale, bias and 1/std; every weight tensor of graft's network in the
program with its values (float: equal; int8: within half a quantization step) and the weights' size. Then graft's
reference interpreter of ML programs (:mod:`graft.deploy.coreml_mil`: the written ops run one by one in PyTorch,
float32) runs the program over the run's val split beside graft's model: the float program must agree with it
(``bundle.check_float``), the int8-weight program lose at most one point of val accuracy (``bundle.check_drop``).
That shows the program computes graft's model, not what Core ML's kernels do on a device (float16 on the GPU or the
Neural Engine). Any failed check ends in an ``error:`` line and nothing is written.

The folder (default ``RUN/coreml`` or ``RUN/coreml-int8``): ``model.mlpackage/``, ``model.mlpackage.json`` (the
sidecar), ``export.json``, ``predict_coreml.py`` (macOS example) and ``requirements.txt``.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.core.config import ExportConfig
from graft.deploy import bundle
from graft.deploy.coreml_spec import (
    INPUT_NAME,
    LABEL_NAME,
    PROBS_NAME,
    check_package,
    import_coremltools,
    weight_bytes,
)
from graft.deploy.formats import ExportError, ExportResult, check_exportable, describe, inference_module, reason

FORMAT = "graft-coreml/1"
MODEL_NAME = "model.mlpackage"
#: The oldest OS that runs the package: ML programs with int8 weights (constexpr_affine_dequantize) need iOS 16.
DEPLOYMENT_TARGET = "iOS16"
MIN_OS = "iOS 16, macOS 13, tvOS 16, watchOS 9"
#: The smallest float/int8 size ratio accepted (int8 weights are a quarter of float32 ones, plus the program).
MIN_SIZE_RATIO = 3.0
REQUIREMENTS = "coremltools>=8\npillow\nnumpy\n"
NOT_RUN = "Core ML runs only on Apple platforms (coremltools has no Core ML runtime on Linux or Windows)"


def coreml_network(module: Any, std: tuple[float, ...]) -> Any:
    """``module`` with graft's per-channel 1/std before it (the image input does /255 and -mean) and a softmax
    after it, so the classifier's outputs are probabilities."""
    import torch

    class CoreMLNetwork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = module
            self.register_buffer("inv_std", (1.0 / torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1))

        def forward(self, x: Any) -> Any:
            return torch.softmax(self.net(x * self.inv_std), dim=1)

    return CoreMLNetwork().eval()


def class_labels(clf: Any) -> list[str]:
    return [str(c) for c in clf.classes]


def convert(module: Any, clf: Any, path: Path) -> str:
    """The float32 ML program of ``module`` (:func:`coreml_network`), saved as a package at ``path``; returns how
    it was captured. ``torch.jit.trace`` first (what coremltools converts most reliably); where coremltools
    cannot convert the traced graph (torchvision's ViT: an int() of a tensor), ``torch.export``."""
    import torch

    ct = import_coremltools()
    p = clf.preprocess
    size = p.input_size
    image = ct.ImageType(
        name=INPUT_NAME,
        shape=(1, 3, size, size),
        scale=1.0 / 255.0,
        bias=[-m for m in p.mean],
        color_layout=ct.colorlayout.RGB,
    )
    example = (torch.rand(1, 3, size, size),)
    captures = {
        "torch.jit.trace": lambda: torch.jit.trace(module, example),
        "torch.export": lambda: torch.export.export(module, example).run_decompositions({}),
    }
    errors = []
    for how, capture in captures.items():
        try:
            with bundle.quiet("coremltools"), torch.inference_mode(False), torch.no_grad():
                model = ct.convert(
                    capture(),
                    convert_to="mlprogram",
                    inputs=[image],
                    classifier_config=ct.ClassifierConfig(class_labels(clf)),
                    minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                    compute_precision=ct.precision.FLOAT32,
                )
                model.short_description = f"graft {clf.meta.arch} classifier: {', '.join(clf.classes)}"
                model.save(str(path))
            return how
        except Exception as e:
            errors.append(f"{how}: {reason(e)}")
    raise ExportError(
        f"coremltools could not convert {clf.meta.arch} ({'; '.join(errors)}) -- export --format onnx instead"
    )


def quantize(src: Path, dst: Path) -> None:
    """The package at ``src`` with int8 weights (symmetric, per output channel), saved at ``dst``."""
    ct = import_coremltools()
    try:
        with bundle.quiet("coremltools"):
            model = ct.models.MLModel(str(src), skip_model_load=True)
            config = ct.optimize.coreml.OptimizationConfig(
                global_config=ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
            )
            ct.optimize.coreml.linear_quantize_weights(model, config=config).save(str(dst))
    except Exception as e:
        raise ExportError(f"coremltools could not quantize the weights: {reason(e)}") from None


def package_files(path: Path) -> dict[str, bytes]:
    """The package's files as ``{"model.mlpackage/<relative path>": bytes}`` (what bundle.write_folder writes)."""
    return {
        f"{MODEL_NAME}/{f.relative_to(path).as_posix()}": f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()
    }


def package_sha256(files: dict[str, bytes]) -> str:
    """One hash of a package folder: its files' relative paths and contents, in path order."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def run_export(cfg: ExportConfig, *, log: Callable[[str], None] = print) -> ExportResult:
    """Convert, check the written package (:func:`check_package`, :func:`interpret`), write the folder."""
    from graft.inference.loading import load

    bundle.require("coreml", int8=cfg.int8)
    check_exportable(cfg.run, "coreml")
    clf = load(cfg.run, device="cpu")
    if getattr(clf, "multilabel", False):
        raise ExportError(
            f"--format coreml exports single-label runs (a Core ML classifier gives one class label); {cfg.run} is "
            "multi-label: export it with --format onnx, openvino or tflite"
        )
    folder = Path(cfg.out) if cfg.out is not None else bundle.default_folder(cfg.run, "coreml", cfg.int8)
    network = coreml_network(inference_module(clf), clf.preprocess.std)
    checks, figures, files = build(cfg, clf, network, log)
    ct = import_coremltools()
    info = sidecar(clf, folder, cfg.int8, checks, figures, ct.__version__)
    info |= {"sha256": package_sha256(files), "bytes": sum(len(d) for d in files.values())}
    record = {
        "format": FORMAT,
        "int8": cfg.int8,
        "executed": False,
        "not_executed_because": info["verification_note"],
        "checks": checks,
        **figures,
        **({"quantization": info["quantized"]} if cfg.int8 else {}),
        "minimum_deployment_target": MIN_OS,
        "versions": info["versions"],
    }
    # the generic predict.py runs ONNX, OpenVINO and LiteRT models; a Core ML package needs its own example
    return bundle.write_folder(
        folder,
        MODEL_NAME,
        files,
        info,
        record,
        requirements=REQUIREMENTS,
        verification=None,
        run_dir=cfg.run,
        script=Path(__file__).with_name("predict_coreml.py"),
    )


def build(
    cfg: ExportConfig, clf: Any, network: Any, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """Convert (and quantize) in a temporary folder, check each package as written: the checks, the figures and
    the files of the package to keep."""
    with tempfile.TemporaryDirectory(prefix="graft-coreml-") as tmp:
        float_path, int8_path = Path(tmp, "float.mlpackage"), Path(tmp, "int8.mlpackage")
        log(f"converting {clf.meta.arch} to a Core ML ML program (float32, {MIN_OS} or later)")
        captured = convert(network, clf, float_path)
        checks, ops = check_package(float_path, clf, network, int8=False)
        programs = {"fp32": ops}
        path, figures = float_path, {"captured_with": captured, "float_weight_bytes": weight_bytes(float_path)}
        if cfg.int8:
            log("quantizing the weights to int8 (coremltools linear_quantize_weights, symmetric, per channel)")
            quantize(float_path, int8_path)
            checks, programs["int8"] = check_package(int8_path, clf, network, int8=True)
            path = int8_path
            figures |= size_figures(float_path, int8_path, cfg.run)
        figures |= interpret(clf, cfg, programs, log)
        return checks, figures, package_files(path)


def interpret(clf: Any, cfg: ExportConfig, programs: dict[str, list[Any]], log: Callable[[str], None]) -> dict:
    """The written programs run by graft's reference interpreter (:mod:`graft.deploy.coreml_mil`, not Core ML)
    over the run's val split beside graft's model: the float one must agree with it (``check_float``), the int8
    one lose at most a point against the float one (``check_drop``)."""
    import numpy as np
    import torch

    from graft.deploy.coreml_mil import Unsupported, program_runner

    p = clf.preprocess
    mean, std = torch.tensor(p.mean).view(1, 3, 1, 1), torch.tensor(p.std).view(1, 3, 1, 1)

    def runner(run: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def logits(batch: Any) -> Any:  # graft's normalized batch -> the 0..255 crop the image input takes
            probs = run((torch.from_numpy(batch) * std + mean) * 255.0).numpy()
            return np.log(np.maximum(probs, 1e-30))  # val_figures softmaxes: log-probabilities give them back

        return logits

    try:
        runners = {name: runner(program_runner(ops, INPUT_NAME)) for name, ops in programs.items()}
    except Unsupported as e:
        log(f"the program has an op graft's interpreter does not run ({e}): its outputs were not checked")
        return {"interpreted": False, "not_interpreted_because": f"op {e} is not implemented by graft's interpreter"}
    log(f"running the written program{'s' if len(runners) > 1 else ''} on the run's val images (graft's interpreter)")
    figures = bundle.val_figures(clf, cfg.run, runners, batch_size=cfg.batch_size)
    bundle.check_float(figures, "fp32", cfg.run, "coreml")
    if "int8" in runners:
        bundle.check_drop(figures, cfg.run, "coreml")
    return {"interpreted": True, "interpreter": "graft.deploy.coreml_mil (PyTorch, float32, CPU)", **figures}


def size_figures(float_path: Path, int8_path: Path, run_dir: Path) -> dict[str, Any]:
    """The float and int8 packages' sizes; an int8 package not about 4x smaller is refused."""
    float_bytes = sum(f.stat().st_size for f in float_path.rglob("*") if f.is_file())
    int8_bytes = sum(f.stat().st_size for f in int8_path.rglob("*") if f.is_file())
    w32, w8 = weight_bytes(float_path), weight_bytes(int8_path)
    figures = {
        "fp32_bytes": float_bytes,
        "int8_bytes": int8_bytes,
        "size_ratio": float_bytes / int8_bytes,
        "int8_weight_bytes": w8,
        "weight_size_ratio": w32 / w8,
    }
    if figures["size_ratio"] < MIN_SIZE_RATIO:
        raise ExportError(
            f"the int8 Core ML package of {run_dir} is only {figures['size_ratio']:.2f}x smaller than the float one "
            f"({int8_bytes} vs {float_bytes} bytes; at least {MIN_SIZE_RATIO:g}x expected): nothing was written. "
            f"Report this; meanwhile export the float model: graft export {run_dir} --format coreml"
        )
    return figures


def sidecar(
    clf: Any, folder: Path, int8: bool, checks: dict[str, Any], figures: dict[str, Any], ct_version: str
) -> dict[str, Any]:
    """The sidecar: graft's usual description, with the Core ML input, outputs and preprocessing."""
    p = clf.preprocess
    info = describe(clf, "coreml", folder / MODEL_NAME)
    info["input"] = {
        "name": INPUT_NAME,
        "type": "image",
        "color_layout": "RGB",
        "width": p.input_size,
        "height": p.input_size,
    }
    info["output"] = {
        "class_label": LABEL_NAME,
        "probabilities": PROBS_NAME,
        "is": "the best class and a dictionary class -> probability (softmax inside the model)",
    }
    info["normalization"] = {
        "image_input": {"scale": 1.0 / 255.0, "bias": [-m for m in p.mean]},
        "in_model": {"multiply_per_channel": [1.0 / s for s in p.std]},
        "why": "Core ML's image input has one scale for all channels; graft's per-channel 1/std is the model's "
        "first op",
    }
    info["preprocess_steps"] = [
        "decode the image as 8-bit RGB (EXIF orientation applied, transparency over white)",
        f"resize so the shorter side is {p.resize_size} pixels ({p.interpolation}, antialiased)",
        f"centre crop {p.input_size}x{p.input_size}. Vision's VNCoreMLRequest with imageCropAndScaleOption "
        f".centerCrop scales the shorter side straight to {p.input_size} (a wider view than graft's): for graft's "
        f"view set its regionOfInterest to the centre {p.input_size}/{p.resize_size} of the shorter side",
        "pass the crop as the image input: the model scales to [0, 1], subtracts the mean and divides by the std",
    ]
    info["postprocess"] = "none: classLabel_probs holds the softmax probabilities"
    info["minimum_deployment_target"] = MIN_OS
    info["executed"] = False
    info["verification_note"] = (
        f"{NOT_RUN}; graft checked the written package's spec instead: "
        + "; ".join(f"{k}: {v}" for k, v in checks.items() if isinstance(v, str))
        + f"; {interpreted(figures)}"
    )
    info["spec_checks"] = checks
    if int8:
        info["quantized"] = {
            "tool": f"coremltools {ct_version} linear_quantize_weights",
            "weights": "int8, symmetric, per output channel",
            "activations": "float (weight-only quantization)",
            "accuracy": "measured by graft's interpreter of the program (float32 compute, the int8 weights "
            "dequantized as Core ML defines it), not by Core ML"
            if figures.get("interpreted")
            else "not measured: Core ML cannot run on this platform",
        }
    info["versions"] = info["versions"] | {"coremltools": ct_version}
    return info


def interpreted(figures: dict[str, Any]) -> str:
    """What graft's interpreter of the written program showed, in words."""
    if not figures.get("interpreted"):
        return f"the program's outputs were not checked ({figures['not_interpreted_because']})"
    f, n = figures, figures["val_images"]
    line = (
        f"graft's interpreter of the written program (PyTorch, not Core ML) agrees with graft's model on "
        f"{round(f['fp32_top1_agreement'] * n)}/{n} val images (max probability difference "
        f"{f['fp32_max_probability_diff']:.1e})"
    )
    if "int8_val_acc" in f:
        line += f"; with int8 weights val acc {f['int8_val_acc']:.4f} vs float {f['fp32_val_acc']:.4f}"
    return line


def summary(record: dict[str, Any]) -> str:
    """One line for the terminal: the checks that passed and the size."""
    checks = record["checks"]
    size = f"{record['bytes'] / 1e6:.1f} MB" if "bytes" in record else ""
    if record.get("int8"):
        size = f"{record['int8_bytes'] / 1e6:.1f} vs {record['fp32_bytes'] / 1e6:.1f} MB float"
    return (
        f"Core ML package checked, not run ({NOT_RUN.split(' (')[0]}): {checks['input']}; {checks['classes']}; "
        f"{checks['weights']}; {interpreted(record)}; {size}"
    )
