"""The check of a written Core ML package against graft's model, on its spec and ML program as read back from
the package (no Core ML runtime needed): one image input of S x S RGB, the classifier outputs over exactly the
run's classes in order, the preprocessing ops (x/255 - mean, then 1/std per channel), and every weight tensor of
graft's network in the program (float: equal; int8: within half a quantization step). A mismatch is an
:class:`ExportError` (nothing is written)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from graft.deploy.formats import ExportError

INPUT_NAME = "image"
LABEL_NAME = "classLabel"
PROBS_NAME = "classLabel_probs"


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


def check_package(path: Path, clf: Any, network: Any, *, int8: bool) -> tuple[dict[str, Any], list[Any]]:
    """Check the written package against graft's model (the module's doc lists what); raise ExportError on any
    mismatch. Returns the checks' figures (with one readable line per check) and the program's operations."""
    spec, ops = read_package(path)
    checks = _check_io(spec, ops, clf, path)
    checks |= _check_preprocessing(ops, clf, path)
    checks |= _check_weights(ops, network, int8, path)
    return checks, ops


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

    from graft.deploy.coreml_mil import dequantize

    tensors: dict[str, tuple[Any, Any]] = {}
    for op in ops:
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.size > 1:
            tensors[op.name] = (np.asarray(op.outputs[0].val, np.float64), np.zeros(()))
        elif op.op_type == "constexpr_affine_dequantize":
            values = dequantize(op).double().numpy()
            step = dequantize(op, scale_only=True).double().numpy() / 2
            tensors[op.name] = (values, step)
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
