"""The check of a written Core ML package against graft's model, on its spec and ML program as read back from
the package (no Core ML runtime needed): one image input of S x S RGB, the classifier outputs over exactly the
run's classes in order, the preprocessing ops (x/255 - mean, then 1/std per channel), and every weight tensor of
graft's network in the program (float: equal; int8: within half a quantization step). A mismatch is an
:class:`ExportError` (nothing is written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graft.deploy import bundle
from graft.deploy.formats import ExportError, reason

INPUT_NAME = "image"
LABEL_NAME = "classLabel"
PROBS_NAME = "classLabel_probs"


def import_coremltools() -> Any:
    with bundle.quiet("coremltools"):
        import coremltools

    return coremltools


def read_package(path: Path) -> tuple[Any, list[Any]]:
    """The package's spec and its ML program's operations, as written (no Core ML runtime needed)."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as load_program

    try:
        with bundle.quiet("coremltools"):
            model = ct.models.MLModel(str(path), skip_model_load=True)
            spec = model.get_spec()
            program = load_program(spec, spec.specificationVersion, model.weights_dir)
    except Exception as e:
        raise ExportError(f"the Core ML package cannot be read back: {reason(e)}") from None
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
    """Every weight tensor of the program by its op's and its output's name: (float values, the error its storage
    allows per value: 0 for float, half a quantization step for int8)."""
    import numpy as np

    from graft.deploy.coreml_mil import dequantize

    tensors: dict[str, tuple[Any, Any]] = {}
    for op in ops:
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.size > 1:
            entry = (np.asarray(op.outputs[0].val, np.float64), np.zeros(()))
        elif op.op_type == "constexpr_affine_dequantize":
            entry = (dequantize(op).double().numpy(), dequantize(op, scale_only=True).double().numpy() / 2)
        else:
            continue
        tensors[op.name] = tensors[op.outputs[0].name] = entry
    return tensors


def _layer_biases(ops: list[Any]) -> dict[str, str]:
    """The name of each conv / linear op's weight -> the name of its bias."""
    return {
        op.inputs["weight"].name: op.inputs["bias"].name
        for op in ops
        if op.op_type in ("conv", "linear") and "weight" in op.inputs and "bias" in op.inputs
    }


def _bn_pairs(network: Any) -> list[tuple[str, Any, str, Any]]:
    """graft's network's layers whose BatchNorm stays after them (not folded by graft: timm's BatchNormAct2d):
    (conv or linear name, module, BatchNorm name, module); each BatchNorm after the latest layer before it with as
    many output channels. The converter folds such a pair into one layer; the check proves the values."""
    import torch

    pairs, last = [], None
    for name, module in network.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            last = (name, module)
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and last is not None:
            layer_name, layer = last
            width = layer.out_channels if isinstance(layer, torch.nn.Conv2d) else layer.out_features
            if width == module.num_features and module.running_mean is not None:
                pairs.append((layer_name, layer, name, module))
            last = None
    return pairs


def _folded(layer: Any, bn: Any) -> tuple[Any, Any]:
    """The layer's weight and bias with the BatchNorm after it folded in (float64)."""
    import numpy as np

    g = bn.weight.detach().double().numpy() if bn.weight is not None else 1.0
    b = bn.bias.detach().double().numpy() if bn.bias is not None else 0.0
    s = g / np.sqrt(bn.running_var.detach().double().numpy() + bn.eps)
    w = layer.weight.detach().double().numpy()
    bias = layer.bias.detach().double().numpy() if layer.bias is not None else 0.0
    shape = (-1,) + (1,) * (w.ndim - 1)
    return w * s.reshape(shape), (bias - bn.running_mean.detach().double().numpy()) * s + b


def _close(got: Any, want: Any, step: Any, rtol: float) -> float | None:
    """The largest difference where ``got`` holds ``want`` (within ``step`` per value, plus ``rtol`` of the
    tensor's largest value for float rounding), else None."""
    import numpy as np

    if got.shape != want.shape:
        return None
    diff = np.abs(got - want)
    ok = (diff <= step * 1.001 + rtol * max(1.0, float(np.abs(want).max()))).all()
    return float(diff.max()) if ok else None


def _find(program: dict, by_shape: dict, name: str, want: Any, rtol: float) -> tuple[str, float, bool] | None:
    """The program tensor holding ``want`` (by graft's name, dots as underscores, else any of the same shape)."""
    key = name.replace(".", "_")
    for k in [k for k in (key, key + "_quantized") if k in program] + by_shape.get(want.shape, []):
        got, step = program[k]
        diff = _close(got, want, step, rtol)
        if diff is not None:
            return k, diff, bool(step.any())
    return None


def _check_weights(ops: list[Any], network: Any, int8: bool, path: Path) -> dict[str, Any]:
    """Each float tensor of graft's network (the wrapper's 1/std included) is in the program: by its name
    (the converter keeps it, dots as underscores), else a tensor of the same shape; float32 values equal to
    float precision, int8 ones within half a quantization step. A layer with its BatchNorm after it may be one
    folded layer in the program: its weight scaled per output channel by gamma/sqrt(var + eps) and its bias
    (bias - mean) * that + beta, both checked (float rounding: 1e-5 of the largest value)."""
    program, biases = _program_tensors(ops), _layer_biases(ops)
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, (values, _) in program.items():
        by_shape.setdefault(values.shape, []).append(name)
    state = {k: v for k, v in network.state_dict().items() if v.is_floating_point() and v.numel() > 1}
    matched, values_n, quantized, folded, worst = 0, 0, 0, 0, 0.0
    unfolded: dict[str, str] = {}
    for layer_name, layer, bn_name, bn in _bn_pairs(network):
        w, b = _folded(layer, bn)
        found = _find(program, by_shape, layer_name + ".weight", w, 1e-5)
        bias = program.get(biases.get(found[0], "")) if found else None
        bias_diff = _close(bias[0], b, bias[1], 1e-5) if bias is not None else None
        if found is None or bias_diff is None:
            unfolded[layer_name + ".weight"] = bn_name  # its tensors are looked up one by one below
            continue
        own = [f"{layer_name}.{k}" for k in layer.state_dict()] + [f"{bn_name}.{k}" for k in bn.state_dict()]
        names = [n for n in own if n in state]
        for n in names:
            values_n += state.pop(n).numel()
        matched, folded, quantized = matched + len(names), folded + 1, quantized + found[2]
        worst = max(worst, found[1], bias_diff)
    for name, tensor in state.items():
        found = _find(program, by_shape, name, tensor.detach().double().numpy(), 1e-6)
        if found is None:
            also = f" (nor folded with its BatchNorm {unfolded[name]})" if name in unfolded else ""
            raise _fail(path, f"graft's weight tensor {name} {list(tensor.shape)} is not in the program{also}")
        matched, values_n, worst = matched + 1, values_n + tensor.numel(), max(worst, found[1])
        quantized += found[2]
    if int8 and not quantized:
        raise _fail(path, "none of its weights is int8")
    kind = f"{quantized} of them int8 within half a quantization step" if int8 else "equal in float32"
    if folded and not int8:
        kind += f" (the folded ones to float32 rounding: at most {worst:.1e} apart)"
    fold = f"; {folded} conv/linear + BatchNorm pairs as one folded layer each (weight and bias checked)"
    return {
        "weights": f"all {matched} weight tensors of graft's network ({values_n:,} values) in the program, {kind}"
        + (fold if folded else ""),
        "weight_tensors": matched,
        "weight_values": values_n,
        "int8_tensors": quantized,
        "batchnorm_folded_layers": folded,
        "max_weight_diff": worst,
        "weight_bytes": weight_bytes(path),
    }
