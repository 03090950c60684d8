"""Int8 models: post-training quantization of a run (``graft quantize``), an int8 frozen backbone
(``graft train --mode freeze --int8``) and quantization-aware fine-tuning (``graft train --mode qat``).

One pipeline on the current API, torchao's PT2E (``torch.ao.quantization`` is deprecated in torch 2.14):
``torch.export`` the backbone (dynamic batch) -> ``prepare_pt2e`` (or ``prepare_qat_pt2e``) with the CPU's
quantizer -> calibrate on training images (or fine-tune with fake quantization) -> ``convert_pt2e``. The head stays
float (the tutorial's int8 feature extractor + float head). Body and head are exported together and saved with
``torch.export.save`` as ``model.pt2``; prediction runs it through ``torch.compile`` (inductor, weights frozen),
which lowers the quantize/dequantize patterns to oneDNN int8 kernels. Eager, the same graph is slower than float:
compiling is what makes int8 fast.

Settings by measurement: X86InductorQuantizer with 8-bit activations where the CPU has VNNI, 7-bit
(``reduce_range``) where it has not (without VNNI the int8 kernels add pairs of u8 x s8 products in 16 bits, which
8-bit activations overflow); ArmInductorQuantizer on ARM; ``activation_bits`` ("7"/"8") forces one. Weights are
per-channel symmetric int8 (the quantizer's default); each activation's range is the 99.99th percentile of its
calibration histogram (:data:`ACT_PERCENTILE`). After compiling, :func:`quantize_checked` measures the compiled
program against its eager reference on calibration images and, when they disagree, quantizes again with
``reduce_range=True`` (or fails, when the bits were forced). The check, the activation bits and the CPU are
recorded in ``quantization.json``.

Loading without pickle or code from the file: see :func:`check_archive` for what ``torch.export.load`` would
otherwise unpickle or execute; graft saves nothing of that kind, verifies the file's sha256 (from ``model.json``)
and refuses any archive that holds it. No calibration happens on load.

The deprecated eager API is not used, not even as a fallback: its quantized modules keep packed weights in script
objects that only pickle can save, it needs per-architecture stubs and fusion lists, and with its x86 defaults it
kept only 76.5% top-1 agreement with float MobileNetV2 on the AVX2 CPU of REFERENCE.md. An architecture that
``torch.export``, the quantizer or inductor cannot handle fails with :class:`QuantizationError`; its float run
stays usable.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import os
import platform
import re
import shutil
import statistics
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft import checkpoint as ckpt
from graft.errors import ConfigError, GraftError, RunError
from graft.heads import HeadSpec
from graft.predict import Classifier

PROGRAM_FILE = "model.pt2"
QUANT_FILE = "quantization.json"
INT8_FORMAT = "graft-int8/1"
DEFAULT_CALIB = 128
#: QAT's learning rate, as a share of the fine-tuning one (its weights only adapt to the int8 grid).
QAT_LR_FACTOR = 0.1
#: Calibration/QAT batch size and the batch size of the images/s figures.
BENCH_BATCH = 32


class QuantizationError(GraftError):
    """A model cannot be quantized, or an int8 run cannot be loaded."""


# ----------------------------------------------------------------------------------------------------------------
# backend: which quantizer for this CPU


#: Each activation's range: this percentile of its calibration histogram (both tails where it has negative values).
#: Measured on hymenoptera (frozen mobilenet_v2 and efficientnet_lite0, 153 val images, eager reference graph),
#: against torchao's default (the histogram's greedy L2 search, which models 256 levels even for 7-bit activations):
#: the noise int8 adds to mobilenet_v2's logit difference fell from 0.18 to 0.16 (8-bit) and 0.39 to 0.24 (7-bit);
#: 99.9%, 99.95%, 99.995%, 99.999%, min/max and an exhaustive L2 search were worse on at least one of the two.
ACT_PERCENTILE = 0.9999
#: The CPU features that decide the int8 kernels (x86: VNNI and AMX do 8-bit activations without overflow; ARM:
#: dot-product instructions), recorded in quantization.json.
CPU_FEATURES = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "amx_tile",
    "asimd",
    "asimddp",
    "i8mm",
)
_VNNI = {"avx512_vnni", "avx_vnni", "amx_int8"}
ACTIVATION_BITS = ("auto", "7", "8")


@dataclass(frozen=True)
class Backend:
    """The quantizer chosen for this machine and why (``forced``: the activation bits were asked for)."""

    name: str  # "x86_inductor" | "arm_inductor"
    reduce_range: bool
    reason: str
    forced: bool = False

    @property
    def activation_bits(self) -> int:
        return 7 if self.reduce_range else 8

    def quantizer(self, *, is_qat: bool = False) -> Any:
        if self.name == "arm_inductor":
            from torchao.quantization.pt2e.quantizer import arm_inductor_quantizer as aiq

            q = aiq.ArmInductorQuantizer()
            config = aiq.get_default_arm_inductor_quantization_config(is_qat=is_qat)
        else:
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

            q = xiq.X86InductorQuantizer()
            config = xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat, reduce_range=self.reduce_range)
        return q.set_global(_histogram_activations(config) if is_qat else _percentile_activations(config))

    def with_reduce_range(self) -> Backend:
        return Backend(self.name, True, self.reason + "; 8-bit activations disagreed with the eager reference")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reduce_range": self.reduce_range,
            "activation_bits": self.activation_bits,
            "forced": self.forced,
            "reason": self.reason,
        }


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where it is not readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_info() -> dict[str, Any]:
    """The CPU's model name, architecture and the :data:`CPU_FEATURES` it has (quantization.json's ``cpu``)."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                model = line.split(":", 1)[1].strip()
                break
    flags = cpu_flags()
    return {
        "model": model or platform.processor() or "unknown",
        "machine": platform.machine(),
        "features": {f: f in flags for f in CPU_FEATURES},
    }


def _percentile_observer() -> type:
    """A HistogramObserver whose range is the :data:`ACT_PERCENTILE` of its histogram."""
    from torchao.quantization.pt2e import HistogramObserver

    class PercentileObserver(HistogramObserver):
        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
            total = float(self.histogram.sum())
            if total == 0 or not bool(self.max_val > self.min_val):
                return super().calculate_qparams()  # not calibrated, or one value: torchao's handling
            cumulative = torch.cumsum(self.histogram, 0)
            width = (self.max_val - self.min_val) / self.bins
            top = int(torch.searchsorted(cumulative, ACT_PERCENTILE * total))
            new_max = self.min_val + width * (top + 1)
            new_min = self.min_val
            if self.min_val < 0:
                low = int(torch.searchsorted(cumulative, (1 - ACT_PERCENTILE) * total))
                new_min = self.min_val + width * low
            return self._calculate_qparams(new_min, new_max)

    return PercentileObserver


def _percentile_activations(config: Any) -> Any:
    """A post-training config whose activation observers take the :data:`ACT_PERCENTILE` of their histogram."""
    spec = config.input_activation
    ctr = _percentile_observer().with_args(eps=2**-12)
    pct = dataclasses.replace(spec, observer_or_fake_quant_ctr=ctr)
    out = config.output_activation
    out = pct if out is spec else dataclasses.replace(out, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(config, input_activation=pct, output_activation=out)


def _histogram_activations(config: Any) -> Any:
    """A QAT config whose activation fake-quantizers observe with a histogram, as post-training quantization does.

    The default QAT activation observer is a moving average of batch min/max (1% per batch): calibrated on a few
    batches, its ranges are those of the first batch, outliers included, and on hymenoptera that start was 1-2 val
    images below post-training quantization. graft calibrates, then fixes the activation ranges (see ``_qat``), so
    the histogram's cost is paid on calibration images only.
    """
    from torchao.quantization.pt2e import FakeQuantize, HistogramObserver

    spec = config.input_activation
    ctr = FakeQuantize.with_args(observer=HistogramObserver, eps=2**-12)
    hist = dataclasses.replace(spec, observer_or_fake_quant_ctr=ctr)
    out = config.output_activation
    out = hist if out is spec else dataclasses.replace(out, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(config, input_activation=hist, output_activation=out)


def choose_backend(machine: str | None = None, flags: set[str] | None = None, activation_bits: str = "auto") -> Backend:
    """X86InductorQuantizer on x86-64, ArmInductorQuantizer on ARM.

    ``activation_bits``: ``"auto"`` is 8-bit activations where the x86 CPU has VNNI (or AMX) and 7-bit
    (``reduce_range``) where it has not: without VNNI the int8 kernels add pairs of u8 x s8 products in 16 bits,
    which 8-bit activations overflow. ``"7"`` or ``"8"`` force one (for measuring, or to make the same int8 numerics
    on every machine); forced 8-bit activations that the kernels get wrong fail the compiled check
    (:func:`quantize_checked`) instead of falling back to 7."""
    if activation_bits not in ACTIVATION_BITS:
        raise ConfigError(f"--activation-bits must be one of {', '.join(ACTIVATION_BITS)} (got {activation_bits!r})")
    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    if machine in ("x86_64", "amd64", "i686", "x86"):
        vnni = bool(flags & _VNNI)
        if activation_bits == "7":
            return Backend(
                "x86_inductor", True, "7-bit activations (reduce_range), as asked (--activation-bits 7)", forced=True
            )
        if activation_bits == "8":
            why = "8-bit activations, as asked (--activation-bits 8)" + (
                "" if vnni else "; this CPU has no VNNI, so its int8 kernels may overflow"
            )
            return Backend("x86_inductor", False, why, forced=True)
        if vnni:
            return Backend("x86_inductor", False, "x86 CPU with VNNI: full 8-bit activations")
        return Backend("x86_inductor", True, "x86 CPU without VNNI: 7-bit activations (reduce_range) avoid overflow")
    if machine in ("aarch64", "arm64"):
        if activation_bits == "7":
            raise ConfigError(
                "--activation-bits 7 is an x86 setting (reduce_range); ARM's quantizer uses 8-bit activations: "
                "use --activation-bits auto or 8"
            )
        return Backend("arm_inductor", False, "ARM CPU: torchao's ArmInductorQuantizer", activation_bits == "8")
    raise QuantizationError(
        f"int8 quantization is supported on x86-64 and ARM CPUs; this machine is {machine!r}. "
        "Use the float run (graft predict works on it) or quantize on an x86-64/ARM machine."
    )


def register_int8_lowering() -> None:
    """Register inductor's int8 passes for this CPU (dequantize-conv-quantize -> one oneDNN int8 conv, weight
    prepacking). torchao registers them when its quantizer module is imported; a process that only loads a saved
    program (``graft predict``) never imports it, and without the passes the compiled program runs the decomposed
    reference ops: MobileNetV2 at 85 instead of 330-500 images/s on this machine's 2 cores."""
    import importlib

    name = choose_backend().name  # "x86_inductor" | "arm_inductor"
    importlib.import_module(f"torchao.quantization.pt2e.quantizer.{name}_quantizer")


# ----------------------------------------------------------------------------------------------------------------
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


def _strip_unused(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove parameters and buffers no node reads: ``convert_pt2e`` leaves the float weights beside their int8
    copies, and exporting them would keep the float bytes in the saved file."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name not in used:
            parent, _, leaf = name.rpartition(".")
            owner = gm.get_submodule(parent) if parent else gm
            delattr(owner, leaf)
    return gm


class Int8Program(nn.Module):
    """A converted (int8) graph and its ``torch.compile``\\ d form; calling it runs the compiled one.

    Inference only: ``train()`` does nothing, deep copies share it, and torch.fx cannot trace it (graft's BatchNorm
    folding then leaves it as it is). Batch size 1 and larger batches are two compilations (``dynamic=True``
    specializes on 1), each done on its first call.
    """

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self._compiled = torch.compile(graph, dynamic=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        if isinstance(x, torch.fx.Proxy):
            raise TypeError("int8 programs are compiled graphs; torch.fx does not trace them")
        # Freezing (weights as constants) is what lets inductor prepack the int8 weights for oneDNN; it is set
        # around the call because compilation happens there (torch.compile(options={"freezing": True}) fails in
        # torch 2.14: UnsupportedOperatorException onednn.qconv_prepack). Outside inference mode: the prepacking
        # fails on inference tensors.
        with inductor_config.patch(freezing=True), torch.inference_mode(False), torch.no_grad():
            return self._compiled(x.to(memory_format=torch.channels_last, copy=True))

    def train(self, mode: bool = True) -> Int8Program:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Int8Program:
        return self


def _separate_module_calls(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
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
    graph = _separate_module_calls(export_module(body, size, what=what).module())
    with _failure_says(what, f"torchao's {backend.name} quantizer"):
        prepared = prepare_pt2e(graph, backend.quantizer())
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
        converted = _strip_unused(convert_pt2e(prepared))
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


def _forced_failure(backend: Backend, check: dict[str, Any]) -> str:
    cpu = cpu_info()
    vnni = any(cpu["features"].get(f) for f in _VNNI)
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
        raise QuantizationError(_forced_failure(backend, check))
    if backend.forced and backend.activation_bits == 8 and backend.name == "x86_inductor" and not cpu_flags() & _VNNI:
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
# saving and loading without pickle (and without running code from the file)

_ALLOWED_MEMBER = re.compile(
    r"^[^/]+/("
    r"data/(weights|constants)/[A-Za-z0-9_]+|data/(weights|constants)/model_(weights|constants)_config\.json|"
    r"models/model\.json|data/sample_inputs/model\.pt|archive_format|archive_version|\.data/version|byteorder|"
    r"\.data/serialization_id)$"
)
#: Graph nodes may only call these (a ``torch.export`` graph may name any attribute reachable from ``torch``).
_ALLOWED_TARGET = re.compile(
    r"^(torch\.ops\.(aten|quantized_decomposed)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.getitem)$"
)
#: Symbolic shapes are parsed with sympy.sympify (eval): only symbols, integers and arithmetic.
_SYM_TOKEN = re.compile(r"'?[a-z]+[0-9]+'?|[A-Za-z]+|[0-9]+|[-+*/(),= ]")
_SYM_WORDS = {
    "Symbol",
    "Integer",
    "positive",
    "integer",
    "nonnegative",
    "True",
    "False",
    "FloorDiv",
    "Mod",
    "Max",
    "Min",
}


def _walk_values(obj: Any, key: str) -> Iterable[Any]:
    """Every value stored under ``key`` anywhere in a JSON tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _walk_values(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_values(v, key)


def _safe_sym_expr(expr: Any) -> bool:
    if not isinstance(expr, str):
        return False
    tokens = _SYM_TOKEN.findall(expr)
    if "".join(tokens) != expr:
        return False
    # Symbol names (s31, 's31') and numbers are data; any other word must be one of the few sympy needs.
    return all(not t.isalpha() or t in _SYM_WORDS for t in tokens)


def check_archive(data: bytes, *, source: str = "the program") -> None:
    """Refuse a ``torch.export`` archive from which ``torch.export.load`` would run anything but the int8 graph.

    In torch 2.14 ``torch.export.load`` unpickles (``weights_only=False``) every weight or constant its config
    marks ``use_pickle``, script and opaque objects, and non-empty sample inputs (after a ``weights_only=True``
    try); ``.module()`` ``exec``\\ s the program's ``guards_code``; symbolic shapes go through ``sympy.sympify``
    (``eval``); and a node's target may be any attribute reachable from ``torch``. So every member must be one
    graft writes, nothing may be pickled, the sample inputs must be empty, ``guards_code`` empty, every node must
    call an ``aten``/``quantized_decomposed`` operator, and every symbolic expression must be plain arithmetic.
    """
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = z.namelist()
    except zipfile.BadZipFile:
        raise QuantizationError(f"{source} is not a torch.export archive (not a zip file)") from None

    def refuse(why: str) -> QuantizationError:
        return QuantizationError(f"{source} {why}; refusing to load it. Quantize the float run again.")

    bad = [n for n in names if not _ALLOWED_MEMBER.match(n)]
    if (
        bad
        or not any(n.endswith("/archive_format") for n in names)
        or not any(n.endswith("/models/model.json") for n in names)
    ):
        raise refuse(f"has unexpected or missing members ({bad[:3]})")
    try:
        for n in names:
            if "/data/sample_inputs/" in n and z.getinfo(n).file_size:
                raise refuse(f"holds pickled example inputs ({n})")
            if n.endswith("_config.json"):
                pickled = [k for k, v in json.loads(z.read(n))["config"].items() if v.get("use_pickle", True)]
                if pickled:
                    raise refuse(f"stores {pickled[:3]} with pickle")
            if n.endswith("/models/model.json"):
                program = json.loads(z.read(n))
                if program.get("guards_code"):
                    raise refuse("carries guard code (Python that loading would run)")
                graph = program["graph_module"]["graph"]
                if graph.get("custom_obj_values"):
                    raise refuse("holds script objects (pickled)")
                targets = {node["target"] for node in graph["nodes"]}
                odd = sorted(t for t in targets if not (isinstance(t, str) and _ALLOWED_TARGET.match(t)))
                if odd:
                    raise refuse(f"calls functions other than aten/quantized_decomposed operators ({odd[:3]})")
                exprs = [*_walk_values(program, "expr_str"), *program.get("range_constraints", {})]
                unsafe = [e for e in exprs if not _safe_sym_expr(e)]
                if unsafe:
                    raise refuse(f"has symbolic shapes that are not plain arithmetic ({str(unsafe[0])[:80]!r})")
    except (KeyError, TypeError, AttributeError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, QuantizationError):
            raise
        raise refuse(f"is malformed ({type(e).__name__}: {e})") from None


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


def load_program(path: Path, *, sha256: str | None) -> nn.Module:
    """The saved int8 graph: the file's sha256 (from ``model.json``) and :func:`check_archive` first, then
    ``torch.export.load``. No pickle, no calibration. ``sha256=None`` only for a file this process just wrote."""
    import hashlib

    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  registers the quantized_decomposed ops

    register_int8_lowering()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path} is missing: the int8 run did not finish saving its model") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise RunError(
            f"{path} does not match the sha256 recorded in {path.parent / ckpt.META_FILE}: the file was changed or "
            "damaged. Quantize the float run again (graft quantize RUN)."
        )
    check_archive(data, source=str(path))
    try:
        return torch.export.load(io.BytesIO(data)).module()
    except Exception as e:
        raise RunError(
            f"{path} cannot be loaded by this torch ({torch.__version__}): {type(e).__name__}: {e}. torch.export "
            "files are tied to the torch version that wrote them; quantize the float run again."
        ) from None


def load_int8(run_dir: Path, meta: dict[str, Any], *, device: str = "auto") -> Int8Classifier:
    """The :class:`graft.predict.Classifier` of an int8 run (``graft.predict.load`` calls this)."""
    info = meta.get("quantization")
    if not isinstance(info, dict) or info.get("format") != INT8_FORMAT or not meta.get("program_sha256"):
        raise RunError(
            f"{run_dir / ckpt.META_FILE} does not describe an int8 run of this graft ({INT8_FORMAT}, with the "
            f"sha256 of {PROGRAM_FILE}); quantize the float run again (graft quantize RUN)"
        )
    if device not in ("auto", "cpu"):
        raise ConfigError(f"int8 runs run on the CPU; use --device cpu (or auto), not {device!r}")
    graph = load_program(run_dir / PROGRAM_FILE, sha256=meta["program_sha256"])
    return Int8Classifier(graph, meta, run_dir)


class Int8Classifier(Classifier):
    """A :class:`graft.predict.Classifier` over a compiled int8 program (CPU only; no Grad-CAM)."""

    def __init__(
        self, graph: nn.Module, meta: dict[str, Any], run_dir: Path, program: Int8Program | None = None
    ) -> None:
        from graft.preprocess import Preprocess, eval_transform

        self.model = graph
        self._inference = program or Int8Program(graph)
        self.meta = meta
        self.device = torch.device("cpu")
        self.run_dir = run_dir
        self.classes = list(meta["classes"])
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        self._transform = eval_transform(self.preprocess)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a preprocessed batch ``(B, 3, H, W)`` through the compiled int8 program."""
        return self._inference(batch.cpu()).float()

    def float_model(self) -> None:
        """None: body and head are one compiled int8 program, with no float head for stored float features (they
        are not this program's features) and no float layers for Grad-CAM to differentiate."""
        return None


# ----------------------------------------------------------------------------------------------------------------
# measuring


def _median_seconds(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``fn(x)`` after one warm-up call (which also compiles what is compiled lazily)."""
    with torch.no_grad():
        fn(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def accuracy(clf: Any, paths: Sequence[Path], labels: Sequence[int], *, batch_size: int) -> float:
    """Top-1 accuracy through ``clf.logits`` with the eval transform (what ``graft predict`` computes)."""
    from graft.evaluation import compute_logits

    logits, kept, _ = compute_logits(clf, paths, batch_size=batch_size)
    correct = sum(int(logits[j].argmax() == labels[i]) for j, i in enumerate(kept))
    return correct / max(len(paths), 1)


def _float_file(model: nn.Module) -> bytes:
    """The float model as graft saves it (safetensors)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()})


def measure(
    fp32: Classifier, int8: Int8Classifier, fp32_acc: float, int8_acc: float, fp32_file: bytes, int8_file: bytes
) -> dict[str, Any]:
    """The figures of ``quantization.json`` (CPU; images/s at batch 32, latency at batch 1; medians).

    ``fp32_images_per_s`` is the float model in eager mode (as the tutorial runs it, the issue's reference);
    ``fp32_graft_images_per_s`` is graft's own float predict path (BatchNorm folded; ONNX Runtime when installed),
    the honest competitor. ``fp32_bytes`` is model.safetensors, ``int8_bytes`` model.pt2 (deflated);
    ``fp32_deflated_bytes`` is the float file deflated the same way, for a like-for-like size ratio."""
    size = fp32.preprocess.input_size
    torch.manual_seed(0)
    batch = torch.randn(BENCH_BATCH, 3, size, size)
    eager = copy.deepcopy(fp32.model).cpu().eval()
    return {
        "fp32_val_acc": fp32_acc,
        "int8_val_acc": int8_acc,
        "fp32_bytes": len(fp32_file),
        "int8_bytes": len(int8_file),
        "fp32_deflated_bytes": len(zlib.compress(fp32_file, 9)),
        "fp32_images_per_s": round(BENCH_BATCH / _median_seconds(eager, batch, 3), 2),
        "fp32_graft_images_per_s": round(BENCH_BATCH / _median_seconds(fp32.logits, batch, 3), 2),
        "int8_images_per_s": round(BENCH_BATCH / _median_seconds(int8.logits, batch, 5), 2),
        "fp32_latency_ms": round(1000 * _median_seconds(eager, batch[:1], 10), 2),
        "int8_latency_ms": round(1000 * _median_seconds(int8.logits, batch[:1], 20), 2),
        "batch_size": BENCH_BATCH,
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# int8 run directories


@dataclass
class QuantizeResult:
    """What :func:`quantize` (``graft quantize``) and int8 training wrote."""

    run_dir: Path
    figures: dict[str, Any]

    def summary(self) -> str:
        f = self.figures
        return (
            f"val acc fp32 {f['fp32_val_acc']:.4f} -> int8 {f['int8_val_acc']:.4f}; size "
            f"{f['fp32_bytes'] / 1e6:.2f} MB -> {f['int8_bytes'] / 1e6:.2f} MB "
            f"({f['fp32_bytes'] / f['int8_bytes']:.1f}x smaller); batch {f['batch_size']}: "
            f"fp32 eager {f['fp32_images_per_s']:.1f} img/s (graft's float path "
            f"{f['fp32_graft_images_per_s']:.1f}), int8 {f['int8_images_per_s']:.1f} img/s; batch 1: fp32 "
            f"{f['fp32_latency_ms']:.1f} ms, int8 {f['int8_latency_ms']:.1f} ms"
        )


def split_items(run_dir: Path, classes: Sequence[str], split: str) -> tuple[list[Path], list[int]]:
    """Paths and labels of a run's saved ``train`` or ``val`` split (``data_report.json``)."""
    if split == "val":
        from graft.evaluation import run_val_items

        return run_val_items(run_dir, classes)
    report = ckpt.read_json(run_dir / "data_report.json")
    try:
        root, rels, layout = Path(report["root"]), report["split"][split], report["layout"]
    except (KeyError, TypeError):
        raise RunError(f"{run_dir / 'data_report.json'} has no saved {split} split; train the run again") from None
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for rel in rels:
        parts = Path(rel).parts
        name = parts[1] if layout == "train/val" else parts[0]
        if name in index:
            paths.append(root / rel)
            labels.append(index[name])
    if paths and not paths[0].exists():
        raise RunError(
            f"the run's training images are not under {root} any more (e.g. {paths[0]} is missing); "
            "calibration needs them: put the data back where it was trained"
        )
    return paths, labels


def calibration_batches(preprocess: Any, paths: Sequence[Path], n: int) -> list[torch.Tensor]:
    """``n`` training images spread evenly over the split (so every class is seen), eval transform, batches of 32."""
    from graft.data import load_rgb
    from graft.errors import ImageError
    from graft.preprocess import eval_transform

    if not paths:
        raise RunError("no training images to calibrate on")
    transform = eval_transform(preprocess)
    n = min(n, len(paths))
    picks = sorted({round(i * (len(paths) - 1) / max(n - 1, 1)) for i in range(n)})
    tensors = []
    for i in picks:
        try:
            tensors.append(transform(load_rgb(paths[i], draft=preprocess.resize_size)))
        except ImageError:
            continue  # scan already skipped unreadable files; one that broke since costs one calibration image
    if not tensors:
        raise RunError("none of the calibration images could be read")
    return list(torch.stack(tensors).split(BENCH_BATCH))


def _setting_info(backend: Backend, ranges: str) -> dict[str, Any]:
    """What quantization.json records of the setting: quantizer, activation bits and ranges, and the CPU."""
    return {
        "backend": backend.to_dict(),
        "activation_bits": backend.activation_bits,
        "activation_ranges": ranges,
        "cpu": cpu_info(),
    }


def _int8_dir(run_dir: Path, name: str | None, exist_ok: bool) -> Path:
    out = run_dir.parent / (name or f"{run_dir.name}-int8")
    if out.exists() and not exist_ok:
        raise ConfigError(f"{out} already exists: pass --name for another folder, or --exist-ok to replace its files")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_program(out: Path, converted_body: nn.Module, head: nn.Module, size: int) -> tuple[bytes, Int8Program]:
    """Write ``out/model.pt2`` (int8 body + float head) and load it back the way ``graft predict`` does: what
    gets checked and measured is the saved file's program."""
    import hashlib

    data = program_bytes(converted_body, head, size)
    ckpt.atomic_write_bytes(out / PROGRAM_FILE, data)
    return data, Int8Program(load_program(out / PROGRAM_FILE, sha256=hashlib.sha256(data).hexdigest()))


def finish_int8_run(
    out: Path, meta: dict[str, Any], data: bytes, program: Int8Program, info: dict[str, Any]
) -> Int8Classifier:
    """Write ``model.json`` for ``model.pt2`` (its sha256 and how it was made); the classifier over ``program``."""
    import hashlib

    drop = ("weights_file", "weights_sha256")
    meta = {k: v for k, v in meta.items() if k not in drop} | {
        "program_file": PROGRAM_FILE,
        "program_sha256": hashlib.sha256(data).hexdigest(),
        "quantization": info | {"format": INT8_FORMAT},
    }
    ckpt.atomic_write_json(out / ckpt.META_FILE, meta)
    return Int8Classifier(program.graph, meta, out, program=program)


def write_figures(out: Path, figures: dict[str, Any], info: dict[str, Any], metrics: dict[str, Any]) -> None:
    """quantization.json, and metrics.json with ``best_val_acc`` = the int8 val accuracy."""
    ckpt.atomic_write_json(out / QUANT_FILE, figures | {"quantization": info})
    base = {"best_val_acc": figures["int8_val_acc"], "fp32_val_acc": figures["fp32_val_acc"], "device": "cpu"}
    ckpt.atomic_write_json(out / "metrics.json", base | metrics | {"int8": True})


def quantize(
    run_dir: str | Path,
    *,
    calib: int = DEFAULT_CALIB,
    name: str | None = None,
    exist_ok: bool = False,
    activation_bits: str = "auto",
    log: Callable[[str], None] = print,
) -> QuantizeResult:
    """Post-training int8 quantization of a float run into a new run directory (``RUN-int8`` by default).

    Calibrates on ``calib`` of the run's training images (eval transform), then measures val accuracy (fp32 and
    int8, both through the predict path), sizes and speeds into ``quantization.json``.

    Args:
        run_dir: a float run written by ``graft train``.
        calib: number of training images to calibrate on.
        name: folder name of the int8 run, next to ``run_dir``.
        exist_ok: replace the files of an existing int8 run folder.
        activation_bits: ``"auto"`` (8 on CPUs with VNNI, else 7), ``"7"`` or ``"8"``; see :func:`choose_backend`.
        log: where progress lines go.
    """
    from graft.predict import load

    run_dir = Path(run_dir)
    if calib < 1:
        raise ConfigError(f"--calib must be >= 1 (got {calib})")
    src = load(run_dir, device="cpu")
    if isinstance(src, Int8Classifier):
        raise QuantizationError(f"{run_dir} is already an int8 run; quantize the float run it came from")
    backend = choose_backend(activation_bits=activation_bits)
    train_paths, _ = split_items(run_dir, src.classes, "train")
    val_paths, val_labels = split_items(run_dir, src.classes, "val")
    calibration = calibration_batches(src.preprocess, train_paths, calib)
    fresh = not (run_dir.parent / (name or f"{run_dir.name}-int8")).exists()
    out = _int8_dir(run_dir, name, exist_ok)
    size = src.preprocess.input_size
    saved: dict[str, bytes] = {}

    def finish(converted: nn.Module) -> Int8Program:
        saved["data"], program = save_program(out, converted, src.model.head, size)
        return program

    try:
        _, program, backend, check = quantize_checked(
            src.model.body, calibration, size, backend=backend, what=src.meta["arch"], log=log, finish=finish
        )
    except QuantizationError:
        if fresh:  # nothing usable was written: the same command with other settings may run again
            shutil.rmtree(out, ignore_errors=True)
        raise
    info = {
        "method": "ptq",
        "source_run": str(run_dir),
        "calibration_images": sum(len(b) for b in calibration),
        **_setting_info(backend, f"{ACT_PERCENTILE:.2%} percentile of each calibration histogram"),
        "compiled_check": check,
    }
    data = saved["data"]
    int8 = finish_int8_run(out, src.meta, data, program, info)
    config = ckpt.read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    batch = int(config.get("batch_size", BENCH_BATCH))  # the run's val numerics: its own batch size
    start = time.perf_counter()
    int8_acc = accuracy(int8, val_paths, val_labels, batch_size=batch)
    fp32_acc = accuracy(src, val_paths, val_labels, batch_size=batch)
    log(f"int8: val accuracy fp32 {fp32_acc:.4f}, int8 {int8_acc:.4f} ({time.perf_counter() - start:.1f}s)")
    fp32_file = (run_dir / ckpt.MODEL_FILE).read_bytes()
    figures = measure(src, int8, fp32_acc, int8_acc, fp32_file, data)
    for f in ("data_report.json", "config.json"):
        if (run_dir / f).exists():
            shutil.copyfile(run_dir / f, out / f)
    write_figures(out, figures, info, {"n_val": len(val_paths), "classes": src.classes})
    result = QuantizeResult(out, figures)
    log(f"int8: {result.summary()}; wrote {out}")
    return result


# ----------------------------------------------------------------------------------------------------------------
# int8 training: --mode freeze --int8, and --mode qat


class _QatModel(nn.Module):
    """A body prepared for QAT (an exported graph with fake quantization) + the float head.

    The body's BatchNorm stays in eval mode (running statistics fixed) while the weights train: exported graphs
    ignore ``module.train``, so it is switched the PT2E way once, here; ``train()``/``eval()`` only reach the head."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        from torchao.quantization.pt2e import move_exported_model_to_eval

        super().__init__()
        self.body, self.head = move_exported_model_to_eval(body), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            raise TypeError("QAT graphs are not traced by torch.fx")  # graft's BN folding leaves this model as is
        return self.head(self.body(x))

    def train(self, mode: bool = True) -> _QatModel:
        self.training = mode
        self.head.train(mode)
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _QatModel:
        return self  # graft's eval path copies models before folding BatchNorm; this one is used as it is


def _fit(target: nn.Module, data: tuple[Any, Any], cfg: Any, lr: float, epochs: int, **kw: Any) -> Any:
    """:func:`graft.training.fit` on the CPU with the run's optimizer, scheduler and loss."""
    from graft import training as T

    optimizer = T.make_optimizer(cfg, [p for p in target.parameters() if p.requires_grad], lr)
    return T.fit(
        target,
        *data,
        optimizer=optimizer,
        scheduler=T.make_scheduler(cfg, optimizer, epochs),
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        epochs=epochs,
        device=torch.device("cpu"),
        patience=cfg.patience,
        **kw,
    )


def run_int8_training(cfg: Any, *, log: Callable[[str], None] = print) -> Any:
    """``graft train --mode freeze --int8`` and ``graft train --mode qat`` (from :func:`graft.training.run_training`).

    freeze --int8: the backbone is quantized (calibrated on ``cfg.calib`` training images) and a float head trains
    on its int8 features; the same head trained on the float features gives ``fp32_val_acc``.
    qat: ``--mode finetune``'s float schedule first (the head on float features for ``--head-epochs``, then every
    layer for ``--epochs``), then ``--qat-epochs`` of fake-quantized training from calibrated ranges; then int8.
    """
    from graft import data as datamod
    from graft import training as T
    from graft.backbones import get_backbone
    from graft.model import GraftModel, build_model, choose_weights
    from graft.runtime import seed_everything

    if getattr(cfg, "resume", None):
        raise ConfigError("--resume does not apply to int8 runs (--int8, --mode qat) yet; start the run again")
    if cfg.device not in ("auto", "cpu"):
        raise ConfigError(
            f"int8 training runs on the CPU (int8 kernels are CPU kernels); use --device cpu, not {cfg.device}"
        )
    started = time.perf_counter()
    backend = choose_backend(activation_bits=getattr(cfg, "activation_bits", "auto"))
    device = torch.device("cpu")
    generator = seed_everything(cfg.seed)
    spec = get_backbone(cfg.arch)
    chosen = choose_weights(spec, cfg.pretrained)
    preprocess = chosen.preprocess if chosen else spec.preprocess
    size = preprocess.input_size
    keep = min(1 << 30, int(datamod.available_memory() * 0.1))
    dataset = datamod.scan(
        cfg.data, val_split=cfg.val_split, seed=cfg.seed, draft=preprocess.resize_size, keep_decoded=keep
    )
    model, weights, pretrained = build_model(
        spec, len(dataset.classes), head=HeadSpec(cfg.hidden, cfg.dropout), pretrained=cfg.pretrained
    )
    run_dir = T._make_run_dir(cfg)
    log(
        f"run {run_dir}: {cfg.arch} ({pretrained.tag or pretrained.source}), "
        f"{'freeze --int8' if cfg.mode == 'freeze' else 'qat'}, {len(dataset.train)} train / "
        f"{len(dataset.val)} val images, {len(dataset.classes)} classes, cpu"
    )
    stages = cfg.stages()
    ckpt.atomic_write_json(run_dir / "config.json", cfg.to_dict() | {"resolved_lr": stages[-1][2], "stages": stages})
    ckpt.atomic_write_json(run_dir / "data_report.json", dataset.report.to_dict() | {"split": dataset.split_dict()})
    meta = T._model_meta(cfg, spec, weights, pretrained, preprocess, dataset.classes)
    cache_key = None
    if pretrained.sha256:  # the float features of known weights are shared with float runs
        cache_key = {"arch": spec.name, "arch_kwargs": meta["arch_kwargs"], "weights_sha256": pretrained.sha256}
        cache_key["device"] = "cpu"
    rows: list[list[Any]] = []

    def on_epoch(r: Any, improved: bool, result: Any) -> None:
        rows.append(r.row())
        ckpt.write_csv(run_dir / "results.csv", T.RESULTS_HEADER, rows)
        log(
            f"epoch {r.epoch:>3} {r.stage:<4} train loss {r.train_loss:.4f} acc {r.train_acc:.4f}  "
            f"val loss {r.val_loss:.4f} acc {r.val_acc:.4f}  lr {r.lr:.2e}  {r.seconds:5.1f}s"
            + ("  *best" if improved else "")
        )

    data = T._StageData(cfg, model, dataset, preprocess, device, generator, cache_key, log)
    history: list[Any] = []
    if cfg.mode == "freeze":
        head0 = copy.deepcopy(model.head)
        model.freeze()
        fp32_acc = _fit(model.head, data.features(), cfg, stages[0][2], cfg.epochs).best_val_acc
        log(f"fp32 head on float features (reference): val acc {fp32_acc:.4f}")
        calibration = calibration_batches(preprocess, [s.path for s in dataset.train], cfg.calib)
        body, program, backend, check = quantize_checked(
            model.body, calibration, size, backend=backend, what=cfg.arch, log=log
        )
        int8_model = GraftModel(program, head0).freeze()
        int8_data = T._StageData(cfg, int8_model, dataset, preprocess, device, generator, None, log)
        fit = _fit(
            int8_model.head, int8_data.features(), cfg, stages[0][2], cfg.epochs, on_epoch=on_epoch, stage="head"
        )
        history, head = fit.history, int8_model.head
        info: dict[str, Any] = {"method": "freeze-int8", "calibration_images": sum(len(b) for b in calibration)}
    else:
        best_acc = -1.0
        if cfg.head_epochs:
            model.freeze()
            fit = _fit(model.head, data.features(), cfg, stages[0][2], cfg.head_epochs, on_epoch=on_epoch, stage="head")
            history, best_acc = fit.history, fit.best_val_acc
        model.unfreeze()
        fit = _fit(
            model, data.images(), cfg, stages[-1][2], cfg.epochs, on_epoch=on_epoch, stage="all",
            best_val_acc=best_acc, first_epoch=len(history) + 1,
        )  # fmt: skip
        history += fit.history
        fp32_acc = fit.best_val_acc if fit.best_epoch else best_acc  # the float model QAT starts from
        body, head, qat_history, check_batch, info = _qat(
            cfg, model, data, backend, size, stages[-1][2] * QAT_LR_FACTOR, len(history) + 1, on_epoch, log
        )
        history += qat_history
    data_bytes, program = save_program(run_dir, body, head, size)
    if cfg.mode == "qat":  # QAT cannot be redone with other settings here; the check is recorded
        check = check_compiled(program, check_batch)
        if not checks_out(check):
            forced = f" ({_forced_failure(backend, check)})" if backend.forced else ""
            log(f"int8: warning: the compiled kernels disagree with the eager reference ({check}){forced}")
    ranges = (
        "histogram (torchao's L2 search) on calibration images, then fixed"
        if cfg.mode == "qat"
        else f"{ACT_PERCENTILE:.2%} percentile of each calibration histogram"
    )
    info |= _setting_info(backend, ranges) | {"compiled_check": check}
    int8 = finish_int8_run(run_dir, meta, data_bytes, program, info)
    val_paths = [s.path for s in dataset.val]
    int8_acc = accuracy(int8, val_paths, [s.label for s in dataset.val], batch_size=cfg.batch_size)
    log(f"int8 val acc {int8_acc:.4f} (fp32 {fp32_acc:.4f})")
    # The float model's size and speed (the same for any weights of the architecture): ``model``. Its accuracy,
    # fp32_acc, is that of the head on float features (freeze), or of the float fine-tuned model QAT started from.
    figures = measure(
        Classifier(model.eval(), meta, device, run_dir), int8, fp32_acc, int8_acc, _float_file(model), data_bytes
    )
    metrics = {
        "epochs_run": len(history),
        "train_seconds": round(time.perf_counter() - started, 3),
        "n_train": len(dataset.train),
        "n_val": len(dataset.val),
        "classes": dataset.classes,
    }
    write_figures(run_dir, figures, info, metrics)
    result = QuantizeResult(run_dir, figures)
    log(f"int8: {result.summary()}; run saved to {run_dir}")
    return T.RunResult(run_dir=run_dir, metrics=ckpt.read_json(run_dir / "metrics.json"))


def _qat(
    cfg: Any,
    model: nn.Module,
    data: Any,
    backend: Backend,
    size: int,
    lr: float,
    first_epoch: int,
    on_epoch: Callable[[Any, bool, Any], None],
    log: Callable[[str], None],
) -> tuple[nn.Module, nn.Module, list[Any], torch.Tensor, dict[str, Any]]:
    """Train the float-fine-tuned ``model`` with fake quantization for ``cfg.qat_epochs``, then convert.

    Returns (int8 body, head, history, a val batch to check the compiled program on, what the run records).

    The recipe of fine-tuning QAT (torchvision's QAT reference, the PT2E tutorial): start from post-training
    ranges (calibration images through histogram observers, BatchNorm in eval mode), keep BatchNorm statistics and
    the activation ranges fixed (the weights' per-channel ranges follow the weights), and let the weights adapt to
    the int8 grid at a tenth of the fine-tuning learning rate. Measured on hymenoptera, QAT that also moved
    BatchNorm statistics and ranges on batches of 32 augmented images ended below post-training quantization.
    The calibrated start is evaluated first and competes as "epoch 0": QAT keeps an epoch only when its
    fake-quantized val accuracy beats that start, as every graft stage keeps its best epoch.
    """
    from torchao.quantization.pt2e import HistogramObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from graft.training import run_epoch

    model.train()  # exported in training mode, so that the QAT patterns (conv + BatchNorm) match
    graph = _separate_module_calls(export_module(model.body, size, what=cfg.arch).module())
    qat = _QatModel(prepare_qat_pt2e(graph, backend.quantizer(is_qat=True)), model.head).eval()
    calibration = calibration_batches(data.preprocess, [s.path for s in data.dataset.train], cfg.calib)
    with torch.no_grad():
        for batch in calibration:
            qat.body(batch)
    for module in qat.body.modules():  # activation ranges fixed from here (the weights' follow the weights)
        if isinstance(getattr(module, "activation_post_process", None), HistogramObserver):
            module.disable_observer()
    train_data, val_data = data.images()
    _, start_acc = run_epoch(qat, val_data, nn.CrossEntropyLoss(), torch.device("cpu"))
    log(f"qat: calibrated start (activation ranges and BatchNorm statistics fixed): val acc {start_acc:.4f}")
    fit = _fit(
        qat, (train_data, val_data), cfg, lr, cfg.qat_epochs, on_epoch=on_epoch, stage="qat",
        first_epoch=first_epoch, best_val_acc=start_acc,
    )  # fmt: skip
    if not fit.best_epoch:
        log(f"qat: no epoch beat the calibrated start ({start_acc:.4f}): it is kept")
    body = _strip_unused(convert_pt2e(qat.body))
    info = {
        "method": "qat",
        "qat_lr": lr,
        "calibration_images": sum(len(b) for b in calibration),
        "calibrated_start_val_acc": start_acc,
        "best_qat_epoch": fit.best_epoch or None,
    }
    return body, qat.head, fit.history, next(iter(val_data))[0], info
