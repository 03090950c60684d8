"""Which int8 quantizer for this CPU, and the constants of quantizing (the program file's name and format are
:mod:`graft.inference.int8_archive`'s).

Settings by measurement: X86InductorQuantizer with 8-bit activations where the CPU has VNNI, 7-bit
(``reduce_range``) where it has not (without VNNI the int8 kernels add pairs of u8 x s8 products in 16 bits, which
8-bit activations overflow); ArmInductorQuantizer on ARM; ``activation_bits`` ("7"/"8") forces one. Weights are
per-channel symmetric int8 (the quantizer's default); each activation's range is the 99.99th percentile of its
calibration histogram (:data:`ACT_PERCENTILE`). The activation bits and the CPU's features are recorded in
``quantization.json``.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from typing import Any

import torch

from graft.core.cpu import cpu_flags, cpu_model
from graft.core.errors import ConfigError
from graft.inference.int8_classifier import backend_name

QUANT_FILE = "quantization.json"
#: QAT's learning rate, as a share of the fine-tuning one (its weights only adapt to the int8 grid).
QAT_LR_FACTOR = 0.1
#: Calibration/QAT batch size and the batch size of the images/s figures.
BENCH_BATCH = 32


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
VNNI = {"avx512_vnni", "avx_vnni", "amx_int8"}
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


def cpu_info() -> dict[str, Any]:
    """The CPU's model name, architecture and the :data:`CPU_FEATURES` it has (quantization.json's ``cpu``)."""
    flags = cpu_flags()
    return {
        "model": cpu_model(),
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
    name = backend_name(machine)  # a CPU with neither quantizer: QuantizationError
    flags = cpu_flags() if flags is None else flags
    if name == "x86_inductor":
        vnni = bool(flags & VNNI)
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
    if activation_bits == "7":
        raise ConfigError(
            "--activation-bits 7 is an x86 setting (reduce_range); ARM's quantizer uses 8-bit activations: "
            "use --activation-bits auto or 8"
        )
    return Backend("arm_inductor", False, "ARM CPU: torchao's ArmInductorQuantizer", activation_bits == "8")
