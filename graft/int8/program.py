"""An int8 program made: export, quantize, compile, check and save (``model.pt2``); loading and running it is
:mod:`graft.inference.int8_classifier`.

One pipeline on the current API, torchao's PT2E (``torch.ao.quantization`` is deprecated in torch 2.14):
``torch.export`` the backbone (dynamic batch) -> ``prepare_pt2e`` (or ``prepare_qat_pt2e``) with the CPU's
quantizer -> calibrate on training images (or fine-tune with fake quantization) -> ``convert_pt2e``. The head stays
float (the tutorial's int8 feature extractor + float head). Body and head are exported together and saved with
``torch.export.save`` as ``model.pt2``; prediction runs it through ``torch.compile`` (inductor, weights frozen),
which lowers the quantize/dequantize patterns to oneDNN int8 kernels. Eager, the same graph is slower than float:
compiling is what makes int8 fast. After compiling, :func:`quantize_checked` measures the compiled program against
its eager reference on calibration images and, when they disagree, quantizes again with ``reduce_range=True`` (or
fails, when the bits were forced).

The deprecated eager API is not used, not even as a fallback: its quantized modules keep packed weights in script
objects that only pickle can save, it needs per-architecture stubs and fusion lists, and with its x86 defaults it
kept only 76.5% top-1 agreement with float MobileNetV2 on an AVX2 CPU. An architecture that ``torch.export``, the
quantizer or inductor cannot handle fails with :class:`QuantizationError`; its float run stays usable.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.core import atomic
from graft.core.errors import GraftError
from graft.inference.int8_archive import PROGRAM_FILE, QuantizationError, check_archive
from graft.inference.int8_classifier import Int8Program, load_program
from graft.int8.backend import VNNI, Backend, cpu_flags, cpu_info

# export, quantize, compile


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=4096)


def export_module(module: nn.Module, size: int, *, what: str) -> Any:
    """``torch.export`` with a dynamic batch axis; a module it cannot capture raises :class:`QuantizationError`."""
    example = (torch.randn(2, 3, size, size),)
    try:
        return torch.export.export(module, example, dynamic_shapes=({0: _batch_dim()},))
    except Exception as e:  # torch.export raises many types (UserError, Unsupported, guard failures...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizationError(
            f"{what} cannot be captured by torch.export, which int8 quantization needs ({type(e).__name__}: "
            f"{first[:300]}). Use another architecture (mobilenet_v2, mobilenet_v3_large, resnet18, resnet50 and "
            "efficientnet_lite0 are tested), or keep the float run (graft predict works on it)."
        ) from e


def strip_unused(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove parameters and buffers no node reads: ``convert_pt2e`` leaves the float weights beside their int8
    copies, and exporting them would keep the float bytes in the saved file."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name not in used:
            parent, _, leaf = name.rpartition(".")
            owner = gm.get_submodule(parent) if parent else gm
            delattr(owner, leaf)
    return gm


def separate_module_calls(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Give each call of a module that runs more than once (torchvision's BasicBlock/Bottleneck call one
    ``self.relu`` two or three times) its own name in the metadata the quantizer groups nodes by. Otherwise the
    calls form one "partition" with several outputs and X86InductorQuantizer fails on every ResNet ("Input
    partition has more than one output node", torchao 0.18 + torch 2.14 non-strict export)."""
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and stack:
            key, (fqn, cls) = list(stack.items())[-1]
            if "@" in key:  # the second and later calls: "layer1.0.relu@1"
                stack[key] = (f"{fqn}@{key.rsplit('@', 1)[1]}", cls)
    return gm


@contextlib.contextmanager
def _failure_says(what: str, stage: str) -> Iterator[None]:
    """Any failure of ``stage`` as a :class:`QuantizationError` naming the architecture and what to do."""
    try:
        yield
    except GraftError:
        raise
    except Exception as e:  # torchao and inductor raise many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise QuantizationError(
            f"{what} cannot be quantized: {stage} failed ({type(e).__name__}: {first[:300]}). Use another "
            "architecture (mobilenet_v2, mobilenet_v3_large, resnet18, resnet50 and efficientnet_lite0 are tested), "
            "or keep the float run (graft predict works on it)."
        ) from e


def quantize_body(
    body: nn.Module,
    calibration: Sequence[torch.Tensor],
    size: int,
    *,
    backend: Backend,
    what: str = "the backbone",
    log: Callable[[str], None] = print,
) -> torch.fx.GraphModule:
    """Post-training quantization of a float body: export, prepare, calibrate on ``calibration`` (batches of
    preprocessed images), convert. Returns the converted graph (eager reference numerics; compile it to run fast)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    body = copy.deepcopy(body).eval().cpu()
    start = time.perf_counter()
    graph = separate_module_calls(export_module(body, size, what=what).module())
    with _failure_says(what, f"torchao's {backend.name} quantizer"):
        prepared = prepare_pt2e(graph, backend.quantizer())
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
        converted = strip_unused(convert_pt2e(prepared))
    log(
        f"int8: quantized {what} ({backend.name}, reduce_range={backend.reduce_range}) on "
        f"{sum(len(b) for b in calibration)} images in {time.perf_counter() - start:.1f}s"
    )
    return converted


def check_compiled(program: Int8Program, batch: torch.Tensor) -> dict[str, Any]:
    """The measurement that settles the settings: the compiled int8 kernels against the eager reference graph
    (top-1 agreement, and the L2 norm of the difference relative to the reference's)."""
    with torch.no_grad():
        ref = program.graph(batch)
        out = program(batch)
    agreement = (ref.argmax(1) == out.argmax(1)).float().mean().item()
    rel = ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    return {"agreement": round(agreement, 4), "rel_l2_diff": round(rel, 4), "images": len(batch)}


def checks_out(check: dict[str, Any]) -> bool:
    """False when the compiled kernels compute something else than the quantized graph. They round differently
    from the eager reference, and the differences compound through the layers: 0.02-0.15 on hymenoptera with 7-bit
    activations (mobilenet_v2, efficientnet_lite0). 8-bit activations on an AVX2 CPU without VNNI overflow:
    mobilenet_v2 0.29, caught; efficientnet_lite0 0.12, not caught (hence the warning for forced 8 bits there)."""
    return check["rel_l2_diff"] < 0.2


def forced_failure(backend: Backend, check: dict[str, Any]) -> str:
    cpu = cpu_info()
    vnni = any(cpu["features"].get(f) for f in VNNI)
    why = (
        "without VNNI the int8 kernels add pairs of u8 x s8 products in 16 bits, which 8-bit activations overflow"
        if backend.activation_bits == 8 and not vnni and backend.name == "x86_inductor"
        else "the kernels do not compute what the quantized graph means"
    )
    return (
        f"with {backend.activation_bits}-bit activations (--activation-bits {backend.activation_bits}) the compiled "
        f"int8 program disagrees with its eager reference on this CPU ({cpu['model']}): relative L2 difference "
        f"{check['rel_l2_diff']}, top-1 agreement {check['agreement']} on {check['images']} calibration images; "
        f"{why}. Use --activation-bits auto (this CPU's setting), or quantize on a CPU with VNNI."
    )


def quantize_checked(
    body: nn.Module,
    calibration: Sequence[torch.Tensor],
    size: int,
    *,
    backend: Backend,
    what: str,
    log: Callable[[str], None],
    finish: Callable[[nn.Module], Int8Program] = Int8Program,
) -> tuple[nn.Module, Int8Program, Backend, dict[str, Any]]:
    """:func:`quantize_body`, then ``finish(converted)`` (compile it; or save it with its head and load that
    back), measured against its eager reference on the first calibration batch; with full-range activations
    failing that check, quantized again with ``reduce_range=True``, unless the activation bits were forced
    (``--activation-bits 8``): then the failure is a :class:`QuantizationError`, not another setting.
    Returns (converted graph, the compiled program, the backend used, the check)."""
    converted = quantize_body(body, calibration, size, backend=backend, what=what, log=log)
    start = time.perf_counter()
    with _failure_says(what, "compiling the int8 program (torch.compile)"):
        program = finish(converted)
        check = check_compiled(program, calibration[0])
    log(
        f"int8: compiled ({time.perf_counter() - start:.0f}s); against the eager reference: top-1 agreement "
        f"{check['agreement']:.3f}, relative L2 difference {check['rel_l2_diff']:.3f}"
    )
    if not checks_out(check) and backend.forced:
        raise QuantizationError(forced_failure(backend, check))
    if backend.forced and backend.activation_bits == 8 and backend.name == "x86_inductor" and not cpu_flags() & VNNI:
        # Overflow need not be gross enough to fail the check: efficientnet_lite0 passed it on an AVX2 CPU (0.12)
        # and still lost one hymenoptera val image more than its eager reference.
        log(
            "int8: warning: 8-bit activations on a CPU without VNNI: some 16-bit sums in the int8 kernels may "
            "overflow; the accuracy measured below is what these kernels give (--activation-bits auto: 7-bit here)"
        )
    if not checks_out(check) and not backend.reduce_range:
        log("int8: the compiled kernels disagree with the reference; quantizing again with reduce_range=True")
        return quantize_checked(
            body, calibration, size, backend=backend.with_reduce_range(), what=what, log=log, finish=finish
        )
    return converted, program, backend, check


# ----------------------------------------------------------------------------------------------------------------


def save_program(out: Path, converted_body: nn.Module, head: nn.Module, size: int) -> tuple[bytes, Int8Program]:
    """Write ``out/model.pt2`` (int8 body + float head) and load it back the way ``graft predict`` does: what
    gets checked and measured is the saved file's program."""
    import hashlib

    data = program_bytes(converted_body, head, size)
    atomic.atomic_write_bytes(out / PROGRAM_FILE, data)
    return data, Int8Program(load_program(out / PROGRAM_FILE, sha256=hashlib.sha256(data).hexdigest()))


def program_bytes(converted_body: nn.Module, head: nn.Module, size: int) -> bytes:
    """``torch.export.save`` of int8 body + float head (dynamic batch, no example inputs), checked by
    :func:`check_archive` and rewritten deflated: the graph's JSON and the all-zero int64 weight zero points
    compress well, which ``torch.export.save`` (stored entries) leaves on the table (3.08 -> 2.22 MB for
    MobileNetV2). ``torch.export.load`` reads deflated members."""
    model = nn.Sequential(converted_body, copy.deepcopy(head).eval().cpu())
    ep = export_module(model, size, what="the int8 model")
    ep.example_inputs = None  # they would be pickled
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    src = zipfile.ZipFile(buf)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))  # deterministic bytes
            dst.writestr(entry, src.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    data = out.getvalue()
    check_archive(data, source="the exported int8 program")
    return data
