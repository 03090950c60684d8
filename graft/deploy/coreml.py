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
stay float: about 4x smaller, the accuracy is not measured here.

Core ML models run only on Apple platforms (coremltools has no runtime for Linux or Windows), so the export is not
run here. What graft checks instead, on the package as written (loaded back with ``skip_model_load``): one image
input ``image`` of S x S RGB; the classifier outputs with exactly the run's classes in order; the preprocessing
ops' scale, bias and 1/std; every weight tensor of graft's network present in the program with its values (float:
equal to float32 precision; int8: within half a quantization step of each channel's scale) and the weights' total
size. Any mismatch ends in an ``error:`` line and nothing is written.

The folder (default ``RUN/coreml`` or ``RUN/coreml-int8``): ``model.mlpackage/``, ``model.mlpackage.json`` (the
sidecar), ``export.json``, ``predict_coreml.py`` (macOS example) and ``requirements.txt``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.core.config import ExportConfig
from graft.deploy import bundle
from graft.deploy.formats import ExportError, ExportResult, check_exportable, describe, inference_module

FORMAT = "graft-coreml/1"
MODEL_NAME = "model.mlpackage"
INPUT_NAME = "image"
LABEL_NAME = "classLabel"
PROBS_NAME = "classLabel_probs"
#: The oldest OS that runs the package: ML programs with int8 weights (constexpr_affine_dequantize) need iOS 16.
DEPLOYMENT_TARGET = "iOS16"
MIN_OS = "iOS 16, macOS 13, tvOS 16, watchOS 9"
#: The smallest float/int8 size ratio accepted (int8 weights are a quarter of float32 ones, plus the program).
MIN_SIZE_RATIO = 3.0
REQUIREMENTS = "coremltools>=8\npillow\nnumpy\n"
NOT_RUN = "Core ML runs only on Apple platforms (coremltools has no Core ML runtime on Linux or Windows)"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """coremltools logs every missing native proxy and version warning, and prints progress bars: keep them off
    the user's terminal."""
    loggers = [logging.getLogger(), logging.getLogger("coremltools")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def import_coremltools() -> Any:
    with quiet():
        import coremltools

    return coremltools


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


def convert(module: Any, clf: Any, path: Path) -> None:
    """The float32 ML program of ``module`` (:func:`coreml_network`), saved as a package at ``path``."""
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
    try:
        with quiet(), torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(module, (torch.rand(1, 3, size, size),))
            model = ct.convert(
                traced,
                convert_to="mlprogram",
                inputs=[image],
                classifier_config=ct.ClassifierConfig(class_labels(clf)),
                minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                compute_precision=ct.precision.FLOAT32,
            )
            model.short_description = f"graft {clf.meta.arch} classifier: {', '.join(clf.classes)}"
            model.save(str(path))
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise ExportError(
            f"coremltools could not convert {clf.meta.arch}: {type(e).__name__}: {first_line} "
            "-- export --format onnx instead"
        ) from None


def quantize(src: Path, dst: Path) -> None:
    """The package at ``src`` with int8 weights (symmetric, per output channel), saved at ``dst``."""
    ct = import_coremltools()
    try:
        with quiet():
            model = ct.models.MLModel(str(src), skip_model_load=True)
            config = ct.optimize.coreml.OptimizationConfig(
                global_config=ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
            )
            ct.optimize.coreml.linear_quantize_weights(model, config=config).save(str(dst))
    except Exception as e:
        raise ExportError(f"coremltools could not quantize the weights: {type(e).__name__}: {e}") from None


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
    """Convert, check the written package's spec (:func:`check_package`), write the folder."""
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
    module = inference_module(clf)
    network = coreml_network(module, clf.preprocess.std)
    with tempfile.TemporaryDirectory(prefix="graft-coreml-") as tmp:
        float_path, int8_path = Path(tmp, "float.mlpackage"), Path(tmp, "int8.mlpackage")
        log(f"converting {clf.meta.arch} to a Core ML ML program (float32, {MIN_OS} or later)")
        convert(network, clf, float_path)
        checks = check_package(float_path, clf, network, int8=False)
        path, figures = float_path, {"float_weight_bytes": weight_bytes(float_path)}
        if cfg.int8:
            log("quantizing the weights to int8 (coremltools linear_quantize_weights, symmetric, per channel)")
            quantize(float_path, int8_path)
            checks = check_package(int8_path, clf, network, int8=True)
            path = int8_path
            figures |= size_figures(float_path, int8_path, cfg.run)
        files = package_files(path)
    ct = import_coremltools()
    info = sidecar(clf, folder, cfg.int8, checks, ct.__version__)
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
    result = bundle.write_folder(
        folder, MODEL_NAME, files, info, record, requirements=REQUIREMENTS, verification=None, run_dir=cfg.run
    )
    # the generic predict.py runs ONNX, OpenVINO and LiteRT models; a Core ML package needs predict_coreml.py
    (folder / "predict.py").unlink(missing_ok=True)
    atomic.atomic_write_bytes(folder / "predict_coreml.py", Path(__file__).with_name("predict_coreml.py").read_bytes())
    log(summary(result.figures or record))
    return result


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


def sidecar(clf: Any, folder: Path, int8: bool, checks: dict[str, Any], ct_version: str) -> dict[str, Any]:
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
        f"centre crop {p.input_size}x{p.input_size} (Vision: VNCoreMLRequest with imageCropAndScaleOption "
        f".centerCrop scales the shorter side to {p.input_size} and crops; graft resizes to {p.resize_size} first)",
        "pass the crop as the image input: the model scales to [0, 1], subtracts the mean and divides by the std",
    ]
    info["postprocess"] = "none: classLabel_probs holds the softmax probabilities"
    info["minimum_deployment_target"] = MIN_OS
    info["executed"] = False
    info["verification_note"] = f"{NOT_RUN}; graft checked the written package's spec instead: " + "; ".join(
        f"{k}: {v}" for k, v in checks.items() if isinstance(v, str)
    )
    info["spec_checks"] = checks
    if int8:
        info["quantized"] = {
            "tool": f"coremltools {ct_version} linear_quantize_weights",
            "weights": "int8, symmetric, per output channel",
            "activations": "float (weight-only quantization)",
            "accuracy": "not measured: Core ML models cannot run on this platform",
        }
    info["versions"] = info["versions"] | {"coremltools": ct_version}
    return info


def summary(record: dict[str, Any]) -> str:
    """One line for the terminal: the checks that passed and the size."""
    checks = record["checks"]
    size = f"{record['bytes'] / 1e6:.1f} MB" if "bytes" in record else ""
    if record.get("int8"):
        size = f"{record['int8_bytes'] / 1e6:.1f} vs {record['fp32_bytes'] / 1e6:.1f} MB float"
    return (
        f"Core ML package checked, not run ({NOT_RUN.split(' (')[0]}): {checks['input']}; {checks['classes']}; "
        f"{checks['weights']}; {size}"
    )


# ----------------------------------------------------------------------------------------------------------------
# the spec check of a written package


def read_package(path: Path) -> tuple[Any, list[Any]]:
    """The package's spec and its ML program's operations, as written (no Core ML runtime needed)."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as load_program

    try:
        with quiet():
            model = ct.models.MLModel(str(path), skip_model_load=True)
            spec = model.get_spec()
            program = load_program(spec, spec.specificationVersion, model.weights_dir)
    except Exception as e:
        raise ExportError(f"the Core ML package cannot be read back: {type(e).__name__}: {e}") from None
    return spec, list(program.functions["main"].operations)


def weight_bytes(path: Path) -> int:
    """The size of the package's weight file (the ML program's tensors)."""
    return sum(f.stat().st_size for f in path.rglob("weight.bin"))


def _fail(path: Path, what: str) -> ExportError:
    return ExportError(
        f"the Core ML package does not match graft's model: {what}. Nothing was written; report this with the "
        "run's model.json, and meanwhile export --format onnx"
    )


def check_package(path: Path, clf: Any, network: Any, *, int8: bool) -> dict[str, Any]:
    """Check the written package against graft's model (the module's doc lists what); raise ExportError on any
    mismatch. Returns the checks' figures, with one readable line per check."""
    spec, ops = read_package(path)
    checks = _check_io(spec, ops, clf, path)
    checks |= _check_preprocessing(ops, clf, path)
    checks |= _check_weights(ops, network, int8, path)
    return checks


def _check_io(spec: Any, ops: list[Any], clf: Any, path: Path) -> dict[str, Any]:
    desc, size, classes = spec.description, clf.preprocess.input_size, [str(c) for c in clf.classes]
    inputs = list(desc.input)
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type.WhichOneof("Type") != "imageType":
        raise _fail(path, f"its inputs are {[i.name for i in inputs]}, not one image input {INPUT_NAME!r}")
    image = inputs[0].type.imageType
    rgb = image.ColorSpace.Name(image.colorSpace)
    if (image.width, image.height, rgb) != (size, size, "RGB"):
        raise _fail(path, f"its input is {image.width}x{image.height} {rgb}, not {size}x{size} RGB")
    outputs = sorted(o.name for o in desc.output)
    named = (desc.predictedFeatureName, desc.predictedProbabilitiesName)
    if outputs != sorted([LABEL_NAME, PROBS_NAME]) or named != (LABEL_NAME, PROBS_NAME):
        raise _fail(path, f"its outputs are {outputs}, not the classifier's {LABEL_NAME} and {PROBS_NAME}")
    classify = [op for op in ops if op.op_type == "classify"]
    labels = [str(c) for c in classify[0].inputs["classes"].val] if len(classify) == 1 else None
    if labels != classes:
        raise _fail(path, f"its class labels are {labels}, not the run's {classes}")
    return {
        "input": f"{INPUT_NAME}: {size}x{size} RGB image",
        "classes": f"{LABEL_NAME} and {PROBS_NAME} over the run's {len(classes)} classes, in order",
        "input_size": size,
        "class_labels": labels,
    }


def _check_preprocessing(ops: list[Any], clf: Any, path: Path) -> dict[str, Any]:
    """The ops after the image input: x * 1/255, + (-mean) per channel, * 1/std per channel (the wrapper's)."""
    import numpy as np

    p = clf.preprocess
    expected = [("mul", [1 / 255.0]), ("add", [-m for m in p.mean]), ("mul", [1 / s for s in p.std])]
    found: list[Any] = []
    var = INPUT_NAME
    for op_type, want in expected:
        op = next(
            (o for o in ops if o.op_type == op_type and o.inputs.get("x") is not None and o.inputs["x"].name == var),
            None,
        )
        got = None if op is None or op.inputs["y"].val is None else np.asarray(op.inputs["y"].val, np.float64).ravel()
        if got is None or got.shape != (len(want),) or not np.allclose(got, want, rtol=1e-6, atol=0):
            raise _fail(path, f"the preprocessing {op_type} after {var!r} is {got}, not {want}")
        found.append([float(x) for x in got])
        var = op.outputs[0].name
    (scale,), bias, inv_std = found
    return {
        "preprocessing": f"image * {scale:.6g} + {[round(b, 6) for b in bias]}, then * {[round(s, 6) for s in inv_std]}"
        " per channel (1/std) inside the model",
        "scale": scale,
        "bias": bias,
        "inv_std": inv_std,
    }


def _program_tensors(ops: list[Any]) -> dict[str, tuple[Any, Any]]:
    """Every weight tensor of the program by name: (float values, the error its storage allows per value: 0 for
    float, half a quantization step for int8)."""
    import numpy as np

    tensors: dict[str, tuple[Any, Any]] = {}
    for op in ops:
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.size > 1:
            tensors[op.name] = (np.asarray(op.outputs[0].val, np.float64), np.zeros(()))
        elif op.op_type == "constexpr_affine_dequantize":  # value = (q - zero_point) * scale along axis
            q = np.asarray(op.inputs["quantized_data"].val, np.float64)
            shape = [1] * q.ndim
            shape[int(op.inputs["axis"].val)] = -1
            scale = np.asarray(op.inputs["scale"].val, np.float64)
            zero = np.asarray(op.inputs["zero_point"].val, np.float64)
            scale, zero = (scale.reshape(shape), zero.reshape(shape)) if scale.ndim else (scale, zero)
            tensors[op.name] = ((q - zero) * scale, np.broadcast_to(scale / 2, q.shape))
    return tensors


def _check_weights(ops: list[Any], network: Any, int8: bool, path: Path) -> dict[str, Any]:
    """Each float tensor of graft's network (the wrapper's 1/std included) is in the program: by its name
    (the converter keeps it, dots as underscores), else a tensor of the same shape; float32 values equal to
    float precision, int8 ones within half a quantization step."""
    import numpy as np

    program = _program_tensors(ops)
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, (values, _) in program.items():
        by_shape.setdefault(values.shape, []).append(name)
    matched, values_n, quantized, worst = 0, 0, 0, 0.0
    for name, tensor in network.state_dict().items():
        if not tensor.is_floating_point() or tensor.numel() <= 1:
            continue
        want = tensor.detach().double().numpy()
        key = name.replace(".", "_")
        candidates = [k for k in (key, key + "_quantized") if k in program] + by_shape.get(want.shape, [])
        best = None
        for k in candidates:
            got, step = program[k]
            if got.shape == want.shape:
                diff = np.abs(got - want)
                if (diff <= step * 1.001 + 1e-6 * max(1.0, float(np.abs(want).max()))).all():
                    best = (float(diff.max()), bool(step.any()))
                    break
        if best is None:
            raise _fail(path, f"graft's weight tensor {name} {list(want.shape)} is not in the program")
        matched, values_n, worst = matched + 1, values_n + want.size, max(worst, best[0])
        quantized += best[1]
    if int8 and not quantized:
        raise _fail(path, "none of its weights is int8")
    kind = f"{quantized} of them int8 within half a quantization step" if int8 else "equal in float32"
    return {
        "weights": f"all {matched} weight tensors of graft's network ({values_n:,} values) in the program, {kind}",
        "weight_tensors": matched,
        "weight_values": values_n,
        "int8_tensors": quantized,
        "max_weight_diff": worst,
        "weight_bytes": weight_bytes(path),
    }
