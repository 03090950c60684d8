"""A reference interpreter of a written Core ML ML program, in PyTorch on the CPU, float32.

Core ML itself runs only on Apple platforms, and coremltools has no executor of ML programs elsewhere. To check
the converted program numerically on Linux, graft runs the program's own operations, as read back from the
package (its ops, their attributes and its weights, int8 ones dequantized as Core ML defines it), one by one with
PyTorch's functions. It shows that the program computes graft's model; it does not show what Core ML's kernels do
on a device (which may compute in float16 on the GPU or the Neural Engine). A program with an op it does not
implement (see ``_ops``) is not interpreted (:class:`Unsupported`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: The name under which the interpreter keeps the batch size it runs (no program variable has a space).
BATCH = "batch size"


class Unsupported(Exception):
    """The program has an op this interpreter does not implement."""


def _pad(x: Any, op: Any, kernel: list[int], strides: list[int], dilations: list[int], value: float = 0.0) -> Any:
    """``x`` padded as the op's ``pad_type`` says (custom: [top, bottom, left, right]; same: split as Core ML)."""
    import torch.nn.functional as F

    kind = op.inputs["pad_type"].val if "pad_type" in op.inputs else "valid"
    if kind == "valid":
        return x
    if kind == "custom":
        t, b, left, r = (int(v) for v in op.inputs["pad"].val)
    elif kind in ("same", "same_lower"):
        pads = []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if kind == "same" else (big, small))
        (t, b), (left, r) = pads
    else:
        raise Unsupported(f"pad_type {kind}")
    return F.pad(x, (left, r, t, b), value=value)


def _conv(env: dict[str, Any], op: Any) -> Any:
    import torch.nn.functional as F

    x, w = arg(env, op, "x"), arg(env, op, "weight")
    bias = arg(env, op, "bias") if "bias" in op.inputs else None
    strides = [int(s) for s in op.inputs["strides"].val]
    dilations = [int(d) for d in op.inputs["dilations"].val]
    x = _pad(x, op, list(w.shape[2:]), strides, dilations)
    return F.conv2d(x, w, bias, strides, 0, dilations, int(op.inputs["groups"].val))


def _pad_op(env: dict[str, Any], op: Any) -> Any:
    """``pad``: (before, after) per axis from the first, constant, reflect or replicate."""
    import torch.nn.functional as F

    x = arg(env, op, "x")
    pad = [int(p) for p in op.inputs["pad"].val]
    mode = str(op.inputs["mode"].val) if "mode" in op.inputs else "constant"
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)]
    flat = [p for before, after in reversed(pairs) for p in (before, after)]
    if mode == "constant":
        value = float(op.inputs["constant_val"].val) if "constant_val" in op.inputs else 0.0
        return F.pad(x, flat, value=value)
    if mode not in ("reflect", "replicate"):
        raise Unsupported(f"pad mode {mode}")
    # torch pads the last dimensions only in these modes: the leading (batch, channel) pairs must be zero
    if any(p for pr in pairs[:-2] for p in pr):
        raise Unsupported(f"pad mode {mode} of a leading axis")
    return F.pad(x, flat[:4], mode=mode)


def _pool(env: dict[str, Any], op: Any) -> Any:
    import torch.nn.functional as F

    x = arg(env, op, "x")
    kernel = [int(k) for k in op.inputs["kernel_sizes"].val]
    strides = [int(s) for s in op.inputs["strides"].val]
    ceil = bool(op.inputs["ceil_mode"].val) if "ceil_mode" in op.inputs else False
    if op.op_type == "max_pool":
        return F.max_pool2d(_pad(x, op, kernel, strides, [1, 1], float("-inf")), kernel, strides, 0, ceil_mode=ceil)
    total = F.avg_pool2d(_pad(x, op, kernel, strides, [1, 1]), kernel, strides, 0, ceil_mode=ceil)
    if "exclude_padding_from_average" in op.inputs and bool(op.inputs["exclude_padding_from_average"].val):
        ones = _pad(x[:, :1] * 0 + 1, op, kernel, strides, [1, 1])
        return total / F.avg_pool2d(ones, kernel, strides, 0, ceil_mode=ceil)
    return total


def arg(env: dict[str, Any], op: Any, name: str) -> Any:
    """An op's input as a float32 tensor: an earlier op's output, or the constant the program stores."""
    import torch

    var = op.inputs[name]
    if var.name in env:
        return env[var.name]
    if var.val is None:
        raise Unsupported(f"input {name} of {op.op_type} {op.name} has no value")
    return torch.as_tensor(var.val, dtype=torch.float32)


def _axes(op: Any, name: str = "axes") -> list[int]:
    return [int(a) for a in op.inputs[name].val]


def _ops() -> dict[str, Callable[[dict[str, Any], Any], Any]]:
    import torch
    import torch.nn.functional as F

    def a(env: dict[str, Any], op: Any, name: str = "x") -> Any:
        return arg(env, op, name)

    def val(op: Any, name: str, default: Any = None) -> Any:
        return op.inputs[name].val if name in op.inputs else default

    return {
        "add": lambda e, o: a(e, o) + a(e, o, "y"),
        "sub": lambda e, o: a(e, o) - a(e, o, "y"),
        "mul": lambda e, o: a(e, o) * a(e, o, "y"),
        "real_div": lambda e, o: a(e, o) / a(e, o, "y"),
        "clip": lambda e, o: torch.clamp(a(e, o), float(val(o, "alpha")), float(val(o, "beta"))),
        "relu": lambda e, o: F.relu(a(e, o)),
        "relu6": lambda e, o: F.relu6(a(e, o)),
        "thresholded_relu": lambda e, o: torch.where(a(e, o) >= float(val(o, "alpha")), a(e, o), 0.0),
        "sigmoid": lambda e, o: torch.sigmoid(a(e, o)),
        "silu": lambda e, o: F.silu(a(e, o)),
        "tanh": lambda e, o: torch.tanh(a(e, o)),
        "sigmoid_hard": lambda e, o: torch.clamp(float(val(o, "alpha")) * a(e, o) + float(val(o, "beta")), 0, 1),
        "gelu": lambda e, o: F.gelu(a(e, o), approximate="tanh" if val(o, "mode", "EXACT") != "EXACT" else "none"),
        "conv": _conv,
        "pad": _pad_op,
        "max_pool": _pool,
        "avg_pool": _pool,
        "reduce_mean": lambda e, o: torch.mean(a(e, o), _axes(o), keepdim=bool(val(o, "keep_dims", False))),
        "reshape": lambda e, o: _reshape(a(e, o), [int(s) for s in val(o, "shape")], o, e[BATCH]),
        "transpose": lambda e, o: a(e, o).permute(_axes(o, "perm")),
        "linear": lambda e, o: F.linear(a(e, o), a(e, o, "weight"), a(e, o, "bias") if "bias" in o.inputs else None),
        "matmul": lambda e, o: torch.matmul(
            a(e, o).transpose(-1, -2) if val(o, "transpose_x") else a(e, o),
            a(e, o, "y").transpose(-1, -2) if val(o, "transpose_y") else a(e, o, "y"),
        ),
        "softmax": lambda e, o: torch.softmax(a(e, o), int(val(o, "axis"))),
        "layer_norm": lambda e, o: _layer_norm(a(e, o), o, e),
        "batch_norm": lambda e, o: F.batch_norm(
            a(e, o),
            a(e, o, "mean"),
            a(e, o, "variance"),
            a(e, o, "gamma") if "gamma" in o.inputs else None,
            a(e, o, "beta") if "beta" in o.inputs else None,
            eps=float(val(o, "epsilon", 1e-5)),
        ),
        "concat": lambda e, o: torch.cat([_value(e, v) for v in o.inputs["values"]], int(val(o, "axis"))),
        "expand_dims": lambda e, o: _expand_dims(a(e, o), _axes(o)),
        "squeeze": lambda e, o: _squeeze(a(e, o), _axes(o) if "axes" in o.inputs else None),
        "slice_by_index": _slice,
        "cast": lambda e, o: a(e, o),
    }


def _value(env: dict[str, Any], var: Any) -> Any:
    import torch

    return env[var.name] if var.name in env else torch.as_tensor(var.val, dtype=torch.float32)


def _expand_dims(x: Any, axes: list[int]) -> Any:
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _squeeze(x: Any, axes: list[int] | None) -> Any:
    if axes is None:
        return x.squeeze()
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _slice(env: dict[str, Any], op: Any) -> Any:
    """``slice_by_index``: begin/end/stride per axis, masks ignoring begin or end, squeeze_mask dropping an axis."""
    x = arg(env, op, "x")
    n = x.dim()

    def mask(name: str) -> list[bool]:
        return [bool(m) for m in op.inputs[name].val] if name in op.inputs else [False] * n

    begin, end = [int(b) for b in op.inputs["begin"].val], [int(e) for e in op.inputs["end"].val]
    stride = [int(s) for s in op.inputs["stride"].val] if "stride" in op.inputs else [1] * n
    begin_mask, end_mask, squeeze = mask("begin_mask"), mask("end_mask"), mask("squeeze_mask")
    index: list[Any] = []
    for i in range(n):
        if squeeze[i]:
            index.append(begin[i])
        else:
            index.append(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i]))
    return x[tuple(index)]


def _reshape(x: Any, shape: list[int], op: Any, batch: int) -> Any:
    """The program was traced at batch 1: where its input and output both lead with that batch axis, the
    interpreter runs it ``batch`` wide."""
    static = op.inputs["x"].shape
    if batch > 1 and shape and shape[0] == 1 and static and static[0] == 1 and x.shape[0] == batch:
        shape = [batch, *shape[1:]]
    return x.reshape(shape)


def _layer_norm(x: Any, op: Any, env: dict[str, Any]) -> Any:
    import torch

    axes = _axes(op)
    mean = x.mean(axes, keepdim=True)
    var = ((x - mean) ** 2).mean(axes, keepdim=True)
    y = (x - mean) / torch.sqrt(var + float(op.inputs["epsilon"].val))
    if "gamma" in op.inputs:
        y = y * arg(env, op, "gamma")
    if "beta" in op.inputs:
        y = y + arg(env, op, "beta")
    return y


def dequantize(op: Any, *, scale_only: bool = False) -> Any:
    """``constexpr_affine_dequantize``: (quantized_data - zero_point) * scale along ``axis``, as float32 (with
    ``scale_only``: each value's scale, the size of its quantization step)."""
    import numpy as np
    import torch

    q = np.asarray(op.inputs["quantized_data"].val, np.float32)
    scale = np.asarray(op.inputs["scale"].val, np.float32)
    zero = np.asarray(op.inputs["zero_point"].val, np.float32)
    if scale.ndim:
        shape = [1] * q.ndim
        shape[int(op.inputs["axis"].val)] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return torch.from_numpy(np.broadcast_to(scale, q.shape).copy() if scale_only else (q - zero) * scale)


def program_runner(ops: list[Any], input_name: str) -> Callable[[Any], Any]:
    """The program as a function: float32 image tensor (N, 3, S, S), pixel values 0..255 -> the probabilities the
    classifier reports (the program is for N = 1; more run as a batch where its ops allow). Raises
    :class:`Unsupported` for a program with an op it does not implement."""
    import numpy as np
    import torch

    table = _ops()
    consts: dict[str, Any] = {}
    steps: list[Any] = []
    for op in ops:
        if op.op_type == "const":
            if isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.dtype.kind == "f":
                consts[op.outputs[0].name] = torch.as_tensor(op.outputs[0].val, dtype=torch.float32)
        elif op.op_type == "constexpr_affine_dequantize":
            consts[op.outputs[0].name] = dequantize(op)
        elif op.op_type == "slice_by_index" and "stride" in op.inputs and min(op.inputs["stride"].val) < 0:
            raise Unsupported("slice_by_index with a negative stride")
        elif op.op_type == "classify" or op.op_type in table:
            steps.append(op)
        else:
            raise Unsupported(op.op_type)

    # these ops' batch axis is not told apart from the others: such programs run one image at a time
    batchable = not any(op.op_type in ("slice_by_index", "squeeze", "expand_dims") for op in steps)

    def run(image: Any) -> Any:
        if len(image) > 1 and not batchable:
            return torch.cat([run(image[i : i + 1]) for i in range(len(image))])
        env = dict(consts)
        env[input_name], env[BATCH] = image, len(image)
        with torch.no_grad():
            for op in steps:
                if op.op_type == "classify":
                    return env[op.inputs["probabilities"].name]
                env[op.outputs[0].name] = table[op.op_type](env, op)
        raise Unsupported("the program has no classify op")

    return run
